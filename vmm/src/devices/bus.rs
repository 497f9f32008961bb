//! An address bus (port I/O or MMIO): non-overlapping ranges, each owned by one device.
//! Accesses nobody owns read as all ones and are logged once per address.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range; `data` is
/// the access (1, 2, 4 or 8 bytes), little-endian.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("bus range [{base:#x}, +{len:#x}) overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length or wraps around")]
    BadRange { base: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// How many distinct unknown addresses are reported before going quiet.
const UNKNOWN_LOG_LIMIT: usize = 16;

pub struct Bus {
    name: &'static str,
    entries: Vec<Entry>,
    unknown_seen: Mutex<BTreeSet<u64>>,
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            entries: Vec::new(),
            unknown_seen: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::BadRange { base })?;
        if self.entries.iter().any(|e| base < e.base + e.len && e.base < end) {
            return Err(Error::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let i = self.entries.partition_point(|e| e.base <= addr).checked_sub(1)?;
        let e = &self.entries[i];
        let offset = addr - e.base;
        (offset < e.len).then_some((e, offset))
    }

    /// Routes a read; unknown addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((e, offset)) => lock(&e.device).read(offset, data),
            None => {
                data.fill(0xff);
                self.note_unknown("read", addr, data.len(), "reads as all ones");
            }
        }
    }

    /// Routes a write; writes to unknown addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some((e, offset)) => lock(&e.device).write(offset, data),
            None => self.note_unknown("write", addr, data.len(), "dropped"),
        }
    }

    fn note_unknown(&self, what: &str, addr: u64, len: usize, outcome: &str) {
        let mut seen = self.unknown_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > UNKNOWN_LOG_LIMIT || !seen.insert(addr) {
            return;
        }
        if seen.len() > UNKNOWN_LOG_LIMIT {
            crate::log_warn!("more unknown {} accesses; no longer logging them", self.name);
        } else {
            crate::log_warn!(
                "guest {what} of {len} bytes at unknown {} address {addr:#x} ({outcome})",
                self.name
            );
        }
    }
}

/// A poisoned device lock means a device panicked mid-access; its state is still the best we have.
fn lock(device: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, u8)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new("port");
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fd, &mut b);
        assert_eq!(b[0], 5);
        bus.write(0x3f8, b"x");
        assert_eq!(dev.lock().unwrap().0, vec![(0, b'x')]);
        bus.read(0x400, &mut b);
        assert_eq!(b[0], 0xff, "unknown reads as all ones");
        bus.read(0x3f7, &mut b);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::new("port");
        let dev = || Arc::new(Mutex::new(Recorder(vec![]))) as Arc<Mutex<dyn BusDevice>>;
        bus.insert(0x60, 5, dev()).unwrap();
        assert_eq!(bus.insert(0x64, 1, dev()), Err(Error::Overlap { base: 0x64, len: 1 }));
        assert_eq!(bus.insert(0x70, 0, dev()), Err(Error::BadRange { base: 0x70 }));
        assert_eq!(bus.insert(u64::MAX, 2, dev()), Err(Error::BadRange { base: u64::MAX }));
        bus.insert(0x65, 1, dev()).unwrap();
    }

    #[test]
    fn many_unknown_addresses_do_not_grow_the_log_without_bound() {
        let bus = Bus::new("mmio");
        let mut b = [0u8; 4];
        for a in 0..1000u64 {
            bus.read(a * 4, &mut b);
        }
        assert!(bus.unknown_seen.lock().unwrap().len() <= UNKNOWN_LOG_LIMIT + 1);
    }
}
