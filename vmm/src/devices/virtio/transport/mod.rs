//! How a driver reaches a virtio device. MMIO only (virtio-mmio version 2).
pub mod mmio;
