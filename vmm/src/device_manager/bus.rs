//! A bus: non-overlapping address (or port) ranges, each backed by a device.
//!
//! vCPU threads look up the device of an exit's address and call it with the offset into its
//! range. The bus is built before the vCPUs start and cloned into each of them; devices are
//! shared behind mutexes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A device on a bus.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("Bus range at {base:#x} is empty")]
    EmptyRange { base: u64 },
    #[error("Bus range at {base:#x} of {len:#x} bytes runs past the end of the address space")]
    RangeOverflow { base: u64, len: u64 },
    #[error(
        "Bus range {base:#x}..={last:#x} overlaps the device at {other_base:#x}..={other_last:#x}"
    )]
    Overlap {
        base: u64,
        last: u64,
        other_base: u64,
        other_last: u64,
    },
}

#[derive(Clone)]
struct Entry {
    /// Last address of the range (inclusive, so a range can end at `u64::MAX`).
    last: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Ranges mapped to devices, keyed by their first address.
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `len` addresses from `base` to `device`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::RangeOverflow { base, len })?;
        // Only the range starting closest below `last` can overlap: the ones before it end
        // before it starts.
        if let Some((&other_base, other)) = self.entries.range(..=last).next_back() {
            if other.last >= base {
                return Err(BusError::Overlap {
                    base,
                    last,
                    other_base,
                    other_last: other.last,
                });
            }
        }
        self.entries.insert(base, Entry { last, device });
        Ok(())
    }

    /// The device whose range holds all of `addr..addr + len`, and the offset into it.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        let access_last = addr.checked_add((len as u64).saturating_sub(1))?;
        (access_last <= entry.last).then_some((addr - base, entry))
    }

    /// Dispatches a read; returns false (leaving `data` alone) if no device holds `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, entry)) = self.resolve(addr, data.len()) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(PoisonError::into_inner);
        device.read(offset, data);
        true
    }

    /// Dispatches a write; returns false if no device holds `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, entry)) = self.resolve(addr, data.len()) else {
            return false;
        };
        let mut device = entry.device.lock().unwrap_or_else(PoisonError::into_inner);
        device.write(offset, data);
        true
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|(base, entry)| format!("{base:#x}..={:#x}", entry.last)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses; reads return the offset's low byte.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
        reads: Vec<(u64, usize)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push((offset, data.len()));
            data.fill(offset as u8);
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x1000, 0x100).unwrap();
        for (base, len) in [
            (0x1000, 0x100),
            (0x0f00, 0x101),
            (0x10ff, 1),
            (0x1080, 0x1000),
            (0x0, 0x10000),
        ] {
            assert!(
                matches!(
                    bus.insert(recorder(), base, len),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x} must overlap"
            );
        }
        // Adjacent ranges are fine.
        bus.insert(recorder(), 0x0f00, 0x100).unwrap();
        bus.insert(recorder(), 0x1100, 0x100).unwrap();
        assert_eq!(
            bus.insert(recorder(), 0x2000, 0),
            Err(BusError::EmptyRange { base: 0x2000 })
        );
        assert_eq!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::RangeOverflow {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(recorder(), u64::MAX, 1).unwrap();
    }

    #[test]
    fn accesses_reach_the_right_device_at_the_right_offset() {
        let mut bus = Bus::new();
        let (low, high) = (recorder(), recorder());
        bus.insert(low.clone(), 0x3f8, 8).unwrap();
        bus.insert(high.clone(), 0xd000_0000, 0x1000).unwrap();

        assert!(bus.write(0x3f9, &[7]));
        assert!(bus.write(0xd000_0070, &[1, 0, 0, 0]));
        let mut data = [0u8; 4];
        assert!(!bus.read(0xd000_1000, &mut data));
        assert!(bus.read(0xd000_0ffc, &mut data));
        assert_eq!(data, [0xfc; 4]);

        assert_eq!(low.lock().unwrap().writes, vec![(1, vec![7])]);
        assert_eq!(high.lock().unwrap().writes, vec![(0x70, vec![1, 0, 0, 0])]);
        assert_eq!(high.lock().unwrap().reads, vec![(0xffc, 4)]);
    }

    #[test]
    fn accesses_outside_every_range_are_not_dispatched() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x1000, 0x10).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x1010, &mut data));
        // Straddling the end of the range.
        assert!(!bus.read(0x100e, &mut data));
        assert!(!bus.write(0x100d, &[0; 4]));
        assert!(!bus.write(u64::MAX, &[0; 2]));
        assert_eq!(data, [0xaa; 4]);
        assert!(dev.lock().unwrap().reads.is_empty());
        assert!(dev.lock().unwrap().writes.is_empty());
        assert!(bus.write(0x100c, &[0; 4]));
    }
}
