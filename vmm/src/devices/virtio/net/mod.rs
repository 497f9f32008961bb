//! virtio-net backed by a Linux tap device.
pub mod device;
pub mod event_handler;
pub mod tap;

pub use device::{MacAddr, Net};
pub use tap::Tap;

#[cfg(test)]
mod tests;
