//! ukrt: the tiny runtime shared by the example unikernels.
//!
//! It provides the two ways in (PVH 32-bit entry, 64-bit Linux boot protocol entry), the
//! boot information each protocol hands over, a polled COM1 console and the ways out.
//! No floating point and no `core::fmt` anywhere: the precompiled `core` uses SSE there.
#![no_std]

pub mod boot;
pub mod console;
pub mod entry;
pub mod interrupts;
mod mem;
pub mod platform;
pub mod port;
pub mod time;
pub mod usermode;
pub mod virtio_hal;

pub use boot::BootInfo;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::write_str("PANIC");
    if let Some(loc) = info.location() {
        console::write_str(" at ");
        console::write_str(loc.file());
        console::write_str(":");
        console::write_u64(u64::from(loc.line()));
    }
    console::write_str("\n");
    // A panic is a failure: triple fault so the VMM reports a non-zero exit.
    platform::triple_fault()
}
