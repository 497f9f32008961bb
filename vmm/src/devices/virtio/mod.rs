//! Virtio devices (virtio 1.x, split virtqueues from the virtio-queue crate) and their
//! MMIO transport.
pub mod chain;
pub mod net;
pub mod persist;
pub mod transport;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemoryMmap;

/// Feature bit every modern (virtio 1.x) device and driver agree on.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits (virtio-mmio InterruptStatus).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The device -> driver signals of one device: an interrupt status word shared with the
/// transport, the irqfd that raises the line, and the "needs reset" flag a device sets
/// when the guest gave it something it cannot accept.
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        })
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            crate::log_warn!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// Buffers were used.
    pub fn signal_used(&self) {
        self.raise(INT_USED_RING);
    }

    /// The device is broken until the driver resets it (virtio 1.2, 2.1.2).
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.raise(INT_CONFIG);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The status word and reset flag, for a snapshot.
    pub fn save(&self) -> (u32, bool) {
        (self.status(), self.needs_reset())
    }

    /// Back to a saved status; the line is raised again if the guest had not acked it.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status
            .store(status & (INT_USED_RING | INT_CONFIG), Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
        if self.status() != 0 {
            let _ = self.irqfd.write(1);
        }
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or lies outside guest memory")]
    BadQueue(usize),
    #[error("{0}")]
    Device(String),
}

/// What a transport needs from a device.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 = network).
    fn device_type(&self) -> u32;
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of `avail_features`, checked by the transport).
    fn set_acked_features(&mut self, features: u64);
    fn queue_max_sizes(&self) -> &[u16];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start using `queues` (validated by the transport).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver wrote 0 to Status: forget queues and features.
    fn reset(&mut self);
}
