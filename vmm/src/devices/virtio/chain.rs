//! Descriptor chains as a device may use them: every descriptor checked against guest
//! memory, the direction each buffer must have, the total size, and termination. The
//! virtio-queue iterator stops quietly on a loop or an unreadable descriptor; here that is
//! an error the device reports (and stops on) instead of half-processing.
use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor {index} [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutOfBounds { index: usize, addr: u64, len: u32 },
    #[error("descriptor {index} has length zero")]
    ZeroLength { index: usize },
    #[error("descriptor {index} is device-{found} where the device needs {wanted} buffers")]
    WrongDirection {
        index: usize,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("chain holds more than {max} bytes")]
    TooLarge { max: usize },
    #[error("chain does not end: a loop, or a next index outside the table")]
    Unterminated,
    #[error("chain head descriptor cannot be read")]
    Empty,
    #[error("the queue's used ring cannot be written in guest memory")]
    Ring,
}

/// Which buffers a device expects in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads them (a transmit queue).
    DeviceReads,
    /// The device writes them (a receive queue).
    DeviceWrites,
}

/// A checked buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Walks `chain` (from `mem`), checking every descriptor; fills `out` and returns the total length.
pub fn collect<G, M>(
    mem: &G,
    chain: DescriptorChain<M>,
    direction: Direction,
    max_bytes: usize,
    out: &mut Vec<Buffer>,
) -> Result<usize, ChainError>
where
    G: GuestMemory + ?Sized,
    M: Deref,
    M::Target: GuestMemory,
{
    out.clear();
    let mut total = 0usize;
    let mut last: Option<Descriptor> = None;
    for (index, desc) in chain.enumerate() {
        let (addr, len) = (desc.addr(), desc.len());
        if len == 0 {
            return Err(ChainError::ZeroLength { index });
        }
        let (access, wanted) = match direction {
            Direction::DeviceReads => (Permissions::Read, "readable"),
            Direction::DeviceWrites => (Permissions::Write, "writable"),
        };
        if desc.is_write_only() != (direction == Direction::DeviceWrites) {
            let found = if desc.is_write_only() { "writable" } else { "readable" };
            return Err(ChainError::WrongDirection { index, found, wanted });
        }
        if !mem.check_range(addr, len as usize, access) {
            return Err(ChainError::OutOfBounds {
                index,
                addr: addr.0,
                len,
            });
        }
        total = total
            .checked_add(len as usize)
            .filter(|t| *t <= max_bytes)
            .ok_or(ChainError::TooLarge { max: max_bytes })?;
        out.push(Buffer { addr, len });
        last = Some(desc);
    }
    match last {
        None => Err(ChainError::Empty),
        Some(desc) if desc.has_next() => Err(ChainError::Unterminated),
        Some(_) => Ok(total),
    }
}
