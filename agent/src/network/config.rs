//! What UpdateInterface and UpdateRoutes ask for, checked and typed before
//! any of it reaches the kernel. Plain functions: no netlink, no root.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hull_protocols::agent::{Interface, Route};

/// Longest link name the kernel takes (IFNAMSIZ less the NUL).
const MAX_LINK_NAME: usize = 15;
/// The kernel refuses a smaller MTU on an Ethernet device.
const MIN_MTU: u32 = 68;
/// IPv6 switches itself off on a link whose MTU is below this.
const MIN_IPV6_MTU: u32 = 1280;
/// `RT_SCOPE_LINK`: the destination is on the link itself.
pub const SCOPE_LINK: u8 = 253;
/// `RT_SCOPE_NOWHERE`: not a scope a unicast route can have.
const SCOPE_NOWHERE: u32 = 255;

/// A request field that cannot be used, named as the request spells it
/// (`interface.addresses[1].prefix_length`), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = String;

    /// Six colon-separated pairs of hex digits, in either case.
    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || format!("{text:?} is not a MAC address like 02:42:ac:11:00:02");
        let mut bytes = [0u8; 6];
        let mut groups = text.split(':');
        for byte in &mut bytes {
            let group = groups.next().ok_or_else(expected)?;
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(expected());
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| expected())?;
        }
        if groups.next().is_some() {
            return Err(expected());
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

/// An address with its prefix length: an interface address (`10.88.0.5/16`)
/// or a route's destination network (`10.88.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix_length: u8,
}

impl IpNet {
    fn max_prefix(address: IpAddr) -> u8 {
        if address.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_length))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_length))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    pub fn is_default(&self) -> bool {
        self.prefix_length == 0
    }

    fn default_for(address: IpAddr) -> IpNet {
        let unspecified = match address {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        IpNet {
            address: unspecified,
            prefix_length: 0,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_length)
    }
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A link name the kernel accepts (its `dev_valid_name`).
pub fn check_link_name(field: &str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Err(invalid(field, "empty"));
    }
    if name.len() > MAX_LINK_NAME {
        return Err(invalid(
            field,
            format!(
                "{name:?} is {} bytes; link names are at most {MAX_LINK_NAME}",
                name.len()
            ),
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(invalid(
            field,
            format!("{name:?} is not a link name (no '/', ':', spaces, '.' or '..')"),
        ));
    }
    Ok(())
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, InvalidField> {
    IpAddr::from_str(text)
        .map_err(|_| invalid(field, format!("{text:?} is not an IPv4 or IPv6 address")))
}

/// The guest NIC as UpdateInterface wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mac: MacAddress,
    /// None: keep the link's MTU.
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
}

impl InterfaceConfig {
    pub fn from_request(interface: &Interface) -> Result<Self, InvalidField> {
        check_link_name("interface.name", &interface.name)?;
        let mac = MacAddress::from_str(&interface.mac_address)
            .map_err(|reason| invalid("interface.mac_address", reason))?;
        if mac.0 == [0; 6] {
            return Err(invalid(
                "interface.mac_address",
                "00:00:00:00:00:00 is no NIC's address",
            ));
        }
        if mac.0[0] & 1 == 1 {
            return Err(invalid(
                "interface.mac_address",
                format!("{mac} is a multicast address, not a NIC's"),
            ));
        }
        let mut addresses = Vec::with_capacity(interface.addresses.len());
        for (i, ip) in interface.addresses.iter().enumerate() {
            let field = format!("interface.addresses[{i}]");
            if ip.address.contains('/') {
                return Err(invalid(
                    format!("{field}.address"),
                    format!(
                        "{:?} has a prefix; give it in prefix_length instead",
                        ip.address
                    ),
                ));
            }
            let address = parse_ip(&format!("{field}.address"), &ip.address)?;
            if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
                return Err(invalid(
                    format!("{field}.address"),
                    format!("{address} cannot be a NIC's address"),
                ));
            }
            let max = IpNet::max_prefix(address);
            if ip.prefix_length == 0 || ip.prefix_length > u32::from(max) {
                return Err(invalid(
                    format!("{field}.prefix_length"),
                    format!(
                        "{} is out of range for the {} address {address} (1 to {max})",
                        ip.prefix_length,
                        family(address)
                    ),
                ));
            }
            addresses.push(IpNet {
                address,
                prefix_length: ip.prefix_length as u8,
            });
        }
        let mtu = match interface.mtu {
            0 => None,
            mtu if mtu < MIN_MTU => {
                return Err(invalid(
                    "interface.mtu",
                    format!("{mtu} is below {MIN_MTU}, the smallest MTU of an Ethernet link"),
                ))
            }
            mtu => Some(mtu),
        };
        if let (Some(mtu), Some(v6)) = (mtu, addresses.iter().find(|a| a.address.is_ipv6())) {
            if mtu < MIN_IPV6_MTU {
                return Err(invalid(
                    "interface.mtu",
                    format!(
                        "{mtu} is below {MIN_IPV6_MTU}, the smallest MTU IPv6 runs on, \
                         and the interface has the IPv6 address {v6}"
                    ),
                ));
            }
        }
        Ok(InterfaceConfig {
            name: interface.name.clone(),
            mac,
            mtu,
            addresses,
        })
    }
}

/// One route as UpdateRoutes wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub device: String,
    /// Preferred source address (`src` in ip-route(8)).
    pub source: Option<IpAddr>,
    /// `rtm_scope`; an IPv4 route with no gateway gets link scope unless the
    /// request says otherwise, as `ip route add` does.
    pub scope: u8,
}

impl RouteConfig {
    pub fn from_request(index: usize, route: &Route) -> Result<Self, InvalidField> {
        let field = |name: &str| format!("routes[{index}].{name}");
        check_link_name(&field("device"), &route.device)?;
        let gateway = match route.gateway.as_str() {
            "" => None,
            text => {
                let gateway = parse_ip(&field("gateway"), text)?;
                if gateway.is_unspecified() || gateway.is_multicast() {
                    return Err(invalid(
                        field("gateway"),
                        format!("{gateway} cannot be a gateway"),
                    ));
                }
                Some(gateway)
            }
        };
        let source = match route.source.as_str() {
            "" => None,
            text => Some(parse_ip(&field("source"), text)?),
        };
        let destination = parse_destination(
            &field("destination"),
            &route.destination,
            gateway.or(source),
        )?;
        for (name, address) in [("gateway", gateway), ("source", source)] {
            if let Some(address) = address {
                if address.is_ipv4() != destination.address.is_ipv4() {
                    return Err(invalid(
                        field(name),
                        format!(
                            "{address} is {} but the destination {destination} is {}",
                            family(address),
                            family(destination.address)
                        ),
                    ));
                }
            }
        }
        let scope = match route.scope {
            // IPv6 routes have no scope of their own; ip(8) sends universe.
            0 if gateway.is_none() && destination.address.is_ipv4() => SCOPE_LINK,
            scope if scope >= SCOPE_NOWHERE => {
                return Err(invalid(
                    field("scope"),
                    format!("{scope} is not a scope of a unicast route (0 to 254)"),
                ))
            }
            scope => scope as u8,
        };
        Ok(RouteConfig {
            destination,
            gateway,
            device: route.device.clone(),
            source,
            scope,
        })
    }
}

/// `default`, `0.0.0.0/0`, `::/0`, a network in CIDR form, or one address
/// (a host route). `default` takes its family from `hint`, the gateway or
/// the source.
fn parse_destination(field: &str, text: &str, hint: Option<IpAddr>) -> Result<IpNet, InvalidField> {
    if text.is_empty() {
        return Err(invalid(
            field,
            "empty; give \"default\" or a network like 10.1.0.0/16",
        ));
    }
    if text == "default" {
        return hint.map(IpNet::default_for).ok_or_else(|| {
            invalid(
                field,
                "\"default\" without a gateway or source is neither IPv4 nor IPv6; \
                 write 0.0.0.0/0 or ::/0",
            )
        });
    }
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address = parse_ip(field, address).map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not \"default\" or a network like 10.1.0.0/16"),
        )
    })?;
    let max = IpNet::max_prefix(address);
    let prefix_length = match prefix {
        None => max,
        Some(prefix) => match prefix.parse::<u8>() {
            Ok(length) if length <= max => length,
            _ => {
                return Err(invalid(
                    field,
                    format!(
                        "{text:?}: the prefix length must be 0 to {max} for an {} network",
                        family(address)
                    ),
                ))
            }
        },
    };
    let net = IpNet {
        address,
        prefix_length,
    };
    if net.network() != address {
        return Err(invalid(
            field,
            format!(
                "{text:?} has host bits set; the network is {}/{prefix_length}",
                net.network()
            ),
        ));
    }
    Ok(net)
}

/// The order the kernel can take the routes in: a gateway must be reachable
/// when its route is added, so routes to the link itself (no gateway, such
/// as `169.254.1.1 dev eth0`) go first. Otherwise the request's order.
pub fn install_order(mut routes: Vec<RouteConfig>) -> Vec<RouteConfig> {
    routes.sort_by_key(|route| route.gateway.is_some());
    routes
}

/// ip-route(8) style: `default via 10.88.0.1 dev eth0`.
impl fmt::Display for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.destination.is_default() {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.destination)?;
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev {}", self.device)?;
        if let Some(source) = self.source {
            write!(f, " src {source}")?;
        }
        if self.scope == SCOPE_LINK {
            write!(f, " scope link")?;
        } else if self.scope != 0 {
            write!(f, " scope {}", self.scope)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocols::agent::IpAddress;

    fn interface(name: &str, mac: &str, mtu: u32, addresses: &[(&str, u32)]) -> Interface {
        Interface {
            name: name.into(),
            mac_address: mac.into(),
            mtu,
            addresses: addresses
                .iter()
                .map(|(address, prefix_length)| IpAddress {
                    address: (*address).into(),
                    prefix_length: *prefix_length,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn route(destination: &str, gateway: &str, device: &str) -> Route {
        Route {
            destination: destination.into(),
            gateway: gateway.into(),
            device: device.into(),
            ..Default::default()
        }
    }

    fn route_error(route: &Route) -> InvalidField {
        RouteConfig::from_request(3, route).unwrap_err()
    }

    /// Asserts `err` names `field` and its message holds `detail`.
    fn assert_invalid(err: &InvalidField, field: &str, detail: &str) {
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().contains(detail), "{err}");
    }

    #[test]
    fn mac_addresses_parse_in_either_case_and_print_in_lower_case() {
        let mac: MacAddress = "02:42:AC:11:00:0f".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x42, 0xac, 0x11, 0x00, 0x0f]);
        assert_eq!(mac.to_string(), "02:42:ac:11:00:0f");
    }

    #[test]
    fn malformed_mac_addresses_are_refused_with_the_text() {
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "02-42-ac-11-00-02",
            "2:42:ac:11:00:02",
            "02:42:ac:11:00:0g",
            "02:42:ac:11:00:+2",
            "0242ac110002",
        ] {
            let err = MacAddress::from_str(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn a_complete_interface_is_accepted() {
        let config = InterfaceConfig::from_request(&interface(
            "eth0",
            "02:42:ac:11:00:02",
            1400,
            &[("10.88.0.5", 16), ("fd00:88::5", 64)],
        ))
        .unwrap();
        assert_eq!(config.name, "eth0");
        assert_eq!(config.mtu, Some(1400));
        assert_eq!(
            config
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.88.0.5/16", "fd00:88::5/64"]
        );
        let keep_mtu =
            InterfaceConfig::from_request(&interface("eth0", "02:42:ac:11:00:02", 0, &[])).unwrap();
        assert_eq!(keep_mtu.mtu, None);
    }

    #[test]
    fn interface_errors_name_the_field_and_the_value() {
        let mac = "02:42:ac:11:00:02";
        let cases: [(Interface, &str, &str); 11] = [
            (interface("", mac, 1500, &[]), "name", "empty"),
            (
                interface("a-very-long-name", mac, 1500, &[]),
                "name",
                "16 bytes",
            ),
            (interface("eth/0", mac, 1500, &[]), "name", "eth/0"),
            (interface("eth0", "zz", 1500, &[]), "mac_address", "\"zz\""),
            (
                interface("eth0", "00:00:00:00:00:00", 1500, &[]),
                "mac_address",
                "00:00:00:00:00:00",
            ),
            (
                interface("eth0", "01:00:5e:00:00:01", 1500, &[]),
                "mac_address",
                "multicast",
            ),
            (
                interface("eth0", mac, 1500, &[("10.88.0.300", 16)]),
                "addresses[0].address",
                "10.88.0.300",
            ),
            (
                interface("eth0", mac, 1500, &[("10.88.0.5", 16), ("10.88.0.6", 33)]),
                "addresses[1].prefix_length",
                "33 is out of range for the IPv4 address 10.88.0.6 (1 to 32)",
            ),
            (
                interface("eth0", mac, 1500, &[("fd00::5", 129)]),
                "addresses[0].prefix_length",
                "(1 to 128)",
            ),
            (
                interface("eth0", mac, 1500, &[("10.88.0.5/16", 16)]),
                "addresses[0].address",
                "has a prefix",
            ),
            (
                interface("eth0", mac, 1200, &[("10.88.0.5", 16), ("fd00::5", 64)]),
                "mtu",
                "IPv6 address fd00::5/64",
            ),
        ];
        for (request, field, detail) in cases {
            let err = InterfaceConfig::from_request(&request).unwrap_err();
            assert_invalid(&err, &format!("interface.{field}"), detail);
        }
        let err = InterfaceConfig::from_request(&interface("eth0", mac, 60, &[])).unwrap_err();
        assert!(
            err.to_string().contains("interface.mtu: 60 is below 68"),
            "{err}"
        );
        let err = InterfaceConfig::from_request(&interface("eth0", mac, 1500, &[("10.88.0.5", 0)]))
            .unwrap_err();
        assert!(err.to_string().contains("0 is out of range"), "{err}");
    }

    #[test]
    fn destinations_take_default_cidr_or_one_address() {
        let parse = |destination: &str, gateway: &str| {
            RouteConfig::from_request(0, &route(destination, gateway, "eth0"))
                .unwrap()
                .destination
                .to_string()
        };
        assert_eq!(parse("default", "10.88.0.1"), "0.0.0.0/0");
        assert_eq!(parse("default", "fd00::1"), "::/0");
        assert_eq!(parse("0.0.0.0/0", "10.88.0.1"), "0.0.0.0/0");
        assert_eq!(parse("::/0", "fd00::1"), "::/0");
        assert_eq!(parse("10.1.2.0/24", "10.88.0.1"), "10.1.2.0/24");
        assert_eq!(parse("169.254.1.1", ""), "169.254.1.1/32");
        assert_eq!(parse("fd00:1::/48", ""), "fd00:1::/48");
        let source_only = Route {
            source: "10.88.0.5".into(),
            ..route("default", "", "eth0")
        };
        assert_eq!(
            RouteConfig::from_request(0, &source_only)
                .unwrap()
                .destination
                .to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn route_errors_name_the_field_and_the_value() {
        let cases: [(Route, &str, &str); 10] = [
            (route("", "10.88.0.1", "eth0"), "destination", "empty"),
            (
                route("default", "", "eth0"),
                "destination",
                "0.0.0.0/0 or ::/0",
            ),
            (
                route("10.1.2.3/24", "10.88.0.1", "eth0"),
                "destination",
                "10.1.2.0/24",
            ),
            (
                route("10.1.2.0/33", "10.88.0.1", "eth0"),
                "destination",
                "0 to 32",
            ),
            (route("fd00::/129", "", "eth0"), "destination", "0 to 128"),
            (route("10.1.2.0/x", "", "eth0"), "destination", "10.1.2.0/x"),
            (route("mars", "", "eth0"), "destination", "\"mars\""),
            (route("default", "10.88.0.1", ""), "device", "empty"),
            (route("default", "gw", "eth0"), "gateway", "\"gw\""),
            (
                route("::/0", "10.88.0.1", "eth0"),
                "gateway",
                "10.88.0.1 is IPv4 but the destination ::/0 is IPv6",
            ),
        ];
        for (request, field, detail) in cases {
            assert_invalid(
                &route_error(&request),
                &format!("routes[3].{field}"),
                detail,
            );
        }
        let bad_scope = Route {
            scope: 255,
            ..route("default", "10.88.0.1", "eth0")
        };
        assert_eq!(route_error(&bad_scope).field, "routes[3].scope");
        let bad_source = Route {
            source: "fd00::5".into(),
            ..route("10.1.0.0/16", "", "eth0")
        };
        assert_eq!(route_error(&bad_source).field, "routes[3].source");
    }

    #[test]
    fn link_routes_get_link_scope_and_gateway_routes_keep_theirs() {
        let link = RouteConfig::from_request(0, &route("169.254.1.1", "", "eth0")).unwrap();
        assert_eq!(link.scope, SCOPE_LINK);
        assert_eq!(link.to_string(), "169.254.1.1/32 dev eth0 scope link");
        let via = RouteConfig::from_request(0, &route("default", "169.254.1.1", "eth0")).unwrap();
        assert_eq!(via.scope, 0);
        assert_eq!(via.to_string(), "default via 169.254.1.1 dev eth0");
    }

    #[test]
    fn link_routes_are_installed_before_gateway_routes() {
        // Calico's pod routes: the default route's gateway is reachable only
        // through the link route that the request lists after it.
        let requested = [
            route("default", "169.254.1.1", "eth0"),
            route("10.1.0.0/16", "169.254.1.1", "eth0"),
            route("169.254.1.1", "", "eth0"),
            route("fd00::/64", "", "eth0"),
            route("::/0", "fd00::1", "eth0"),
        ];
        let routes = requested
            .iter()
            .enumerate()
            .map(|(i, r)| RouteConfig::from_request(i, r).unwrap())
            .collect();
        let order: Vec<String> = install_order(routes)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            order,
            [
                "169.254.1.1/32 dev eth0 scope link",
                "fd00::/64 dev eth0",
                "default via 169.254.1.1 dev eth0",
                "10.1.0.0/16 via 169.254.1.1 dev eth0",
                "default via fd00::1 dev eth0",
            ]
        );
    }

    #[test]
    fn networks_clear_host_bits() {
        let net = |address: &str, prefix_length| IpNet {
            address: address.parse().unwrap(),
            prefix_length,
        };
        assert_eq!(net("10.88.0.5", 16).network().to_string(), "10.88.0.0");
        assert_eq!(net("10.88.0.5", 32).network().to_string(), "10.88.0.5");
        assert_eq!(net("10.88.0.5", 0).network().to_string(), "0.0.0.0");
        assert_eq!(net("fd00:88::5", 64).network().to_string(), "fd00:88::");
        assert_eq!(net("fd00:88::5", 0).network().to_string(), "::");
    }
}
