//! Guest RAM: anonymous, private, MAP_NORESERVE; pages cost nothing until the guest
//! touches them.
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::{ram_ranges, MIN_MEMORY};
use crate::config::MemSize;

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--memory {0} is too small: a VM needs at least {min}", min = MemSize::from_bytes(MIN_MEMORY))]
    TooSmall(MemSize),
    #[error("--memory {0} is not a multiple of 4K")]
    Unaligned(MemSize),
    #[error("--memory {memory} is more than this host's {host} of RAM: use a size like 16M or 1G")]
    MoreThanHost { memory: MemSize, host: MemSize },
    #[error("cannot map {memory} of guest memory: {reason}")]
    Mmap { memory: MemSize, reason: String },
}

/// Checks a requested size before anything is mapped.
pub fn validate(memory: MemSize) -> Result<(), Error> {
    let bytes = memory.bytes();
    if bytes < MIN_MEMORY {
        return Err(Error::TooSmall(memory));
    }
    if bytes % PAGE_SIZE != 0 {
        return Err(Error::Unaligned(memory));
    }
    if let Some(host) = contract::limits::host_ram().filter(|&h| bytes > h) {
        return Err(Error::MoreThanHost {
            memory,
            host: MemSize::from_bytes(host),
        });
    }
    Ok(())
}

/// Maps guest RAM for `memory`, around the 32-bit MMIO gap.
pub fn create(memory: MemSize) -> Result<GuestMemoryMmap, Error> {
    validate(memory)?;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(memory.bytes())
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Mmap {
        memory,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn refuses_tiny_unaligned_and_absurd_sizes() {
        assert!(matches!(create(MemSize::from_bytes(1 << 20)), Err(Error::TooSmall(_))));
        assert!(matches!(
            create(MemSize::from_bytes((16 << 20) + 1)),
            Err(Error::Unaligned(_))
        ));
        assert!(matches!(
            create(MemSize::from_bytes(1 << 50)),
            Err(Error::MoreThanHost { .. })
        ));
    }

    #[test]
    fn maps_the_requested_size() {
        let mem = create(MemSize::from_bytes(16 << 20)).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((16 << 20) - 1));
        assert_eq!(mem.num_regions(), 1);
    }
}
