//! The hello program: greet with the command line, then shut down.
use ukrt::{console, platform, BootInfo};

pub fn main(boot: &BootInfo) -> ! {
    console::init();
    console::write_str("hello from unikernel, cmdline: ");
    console::write_bytes(boot.cmdline);
    console::write_str("\n");
    platform::shutdown()
}
