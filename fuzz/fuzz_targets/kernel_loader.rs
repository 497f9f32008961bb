//! A kernel image, as whoever writes a declaration's `image` controls it: every loader
//! (ELF with a PVH note, ELF64 the Linux way, bzImage, multiboot) checks it and refuses it
//! with an error, or loads it inside guest memory; it never panics or writes outside.
#![no_main]
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::OnceLock;

use contract::size::MemSize;
use libfuzzer_sys::fuzz_target;
use vmm::vstate::memory::{self, GuestMemoryMmap};

const MEMORY: u64 = 16 << 20;

fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| memory::create(MemSize::from_bytes(MEMORY)).expect("guest memory"))
}

fuzz_target!(|data: &[u8]| {
    // SAFETY: a fresh anonymous file; the name is a NUL-terminated string.
    let fd = unsafe { libc::memfd_create(c"kernel".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(data).unwrap();
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let mem = memory();
    if let Ok(kernel) = vmm::loader::load_kernel(mem, path.as_ref(), MemSize::from_bytes(MEMORY)) {
        assert!(
            kernel.end <= MEMORY,
            "loaded up to {:#x}, past guest memory",
            kernel.end
        );
    }
});
