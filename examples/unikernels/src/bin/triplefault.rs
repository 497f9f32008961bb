//! A guest that triple-faults on purpose, to test how the VMM reports a dead guest.
#![no_std]
#![no_main]

use ukrt::{console, platform, BootInfo};

fn main(_boot: &BootInfo) -> ! {
    console::init();
    console::write_str("about to triple fault\n");
    platform::triple_fault()
}

ukrt::entry_pvh!(main);
