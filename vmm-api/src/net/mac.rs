//! The guest's MAC address: parsed from the configuration, shown in the device's config space.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a usable MAC address. Each message names the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddressError {
    #[error("{0:?} is not a MAC address: expected six hex bytes separated by colons, like 02:00:00:00:00:01")]
    Syntax(String),
    #[error("MAC address {0} is a multicast address: a network card needs a unicast one (first byte even)")]
    Multicast(String),
    #[error("MAC address {0} is all zeroes, which no network card may use")]
    Zero(String),
}

/// A unicast Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The address of the `index`-th net device when the configuration names none:
    /// locally administered (02:...), 02:00:00:00:00:01 for the first device.
    pub fn for_device_index(index: usize) -> Self {
        // Far fewer devices fit on the virtio-mmio bus than 2^32.
        let n = u32::try_from(index).unwrap_or(u32::MAX - 1) + 1;
        let [a, b, c, d] = n.to_be_bytes();
        MacAddress([0x02, 0x00, a, b, c, d])
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddress {
    type Err = MacAddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || MacAddressError::Syntax(text.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(syntax)?;
            // from_str_radix alone would take "+1".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        if bytes[0] & 1 != 0 {
            return Err(MacAddressError::Multicast(text.to_owned()));
        }
        if bytes == [0; 6] {
            return Err(MacAddressError::Zero(text.to_owned()));
        }
        Ok(MacAddress(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddress({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_colon_separated_hex() {
        let mac: MacAddress = "02:aB:00:ff:10:01".parse().unwrap();
        assert_eq!(mac.bytes(), [0x02, 0xab, 0x00, 0xff, 0x10, 0x01]);
        assert_eq!(mac.to_string(), "02:ab:00:ff:10:01");
    }

    #[test]
    fn bad_addresses_are_refused_with_the_value_in_the_message() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02-00-00-00-00-01",
            "2:00:00:00:00:01",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:+1",
            "02:00:00:00:00:001",
        ] {
            let err = bad.parse::<MacAddress>().unwrap_err();
            assert_eq!(err, MacAddressError::Syntax(bad.to_owned()));
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = "01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err();
        assert!(matches!(err, MacAddressError::Multicast(_)), "{err}");
        assert!(err.to_string().contains("01:00:5e:00:00:01"), "{err}");
        let err = "00:00:00:00:00:00".parse::<MacAddress>().unwrap_err();
        assert!(matches!(err, MacAddressError::Zero(_)), "{err}");
    }

    #[test]
    fn default_addresses_are_locally_administered_unicast_and_distinct() {
        assert_eq!(
            MacAddress::for_device_index(0).to_string(),
            "02:00:00:00:00:01"
        );
        assert_eq!(
            MacAddress::for_device_index(255).to_string(),
            "02:00:00:00:01:00"
        );
        for index in [0, 1, 7, 300] {
            let mac = MacAddress::for_device_index(index);
            assert_eq!(mac.bytes()[0] & 0b11, 0b10, "{mac}");
            assert_eq!(mac.to_string().parse::<MacAddress>(), Ok(mac));
        }
        assert_ne!(
            MacAddress::for_device_index(1),
            MacAddress::for_device_index(2)
        );
    }
}
