//! Virtqueue state in a snapshot. Everything here comes from a file the VMM did not
//! necessarily write, so it goes back through virtio-queue's checks (sizes a power of two
//! and at most the device's maximum, ring alignment) and, for a ready queue, through
//! `is_valid` against the restored guest memory, exactly as a driver's writes would.
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use crate::vstate::memory::GuestMemoryMmap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl QueueSnapshot {
    pub fn save(q: &Queue) -> QueueSnapshot {
        let s = q.state();
        QueueSnapshot {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }

    /// The queue again, for a device whose maximum is `max_size`; a ready queue must lie
    /// inside `mem`.
    pub fn restore(&self, max_size: u16, mem: &GuestMemoryMmap) -> Result<Queue, String> {
        if self.max_size != max_size {
            return Err(format!(
                "queue maximum {} in the snapshot, the device's is {max_size}",
                self.max_size
            ));
        }
        let q = Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| format!("queue: {e}"))?;
        if q.ready() && !q.is_valid(mem) {
            return Err("a ready queue lies outside guest memory".into());
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn ready_queue() -> QueueSnapshot {
        let mut q = Queue::new(256).unwrap();
        q.try_set_size(128).unwrap();
        q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(0x2000)).unwrap();
        q.try_set_used_ring_address(GuestAddress(0x3000)).unwrap();
        q.set_ready(true);
        q.set_next_avail(7);
        QueueSnapshot::save(&q)
    }

    #[test]
    fn a_queue_comes_back_as_it_was() {
        let saved = ready_queue();
        let q = saved.restore(256, &mem()).unwrap();
        assert_eq!(QueueSnapshot::save(&q), saved);
    }

    #[test]
    fn crafted_queues_are_refused() {
        let m = mem();
        assert!(ready_queue().restore(128, &m).is_err(), "another device maximum");
        let cases = [
            QueueSnapshot {
                size: 100,
                ..ready_queue()
            },
            QueueSnapshot {
                size: 512,
                ..ready_queue()
            },
            QueueSnapshot {
                desc_table: 0x1001,
                ..ready_queue()
            },
            QueueSnapshot {
                used_ring: 1 << 40,
                ..ready_queue()
            },
            QueueSnapshot {
                max_size: 0,
                ..ready_queue()
            },
        ];
        for case in cases {
            assert!(case.restore(case.max_size, &m).is_err(), "{case:?}");
        }
    }
}
