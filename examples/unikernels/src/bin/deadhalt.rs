//! A guest that halts with interrupts disabled: it can never run again.
#![no_std]
#![no_main]

use ukrt::{console, BootInfo};

fn main(_boot: &BootInfo) -> ! {
    console::init();
    console::write_str("halting with interrupts off\n");
    loop {
        // SAFETY: deliberately the end of this guest.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

ukrt::entry_pvh!(main);
