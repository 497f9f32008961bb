//! Bounds both sides check: the daemon when it validates a declaration (so the error
//! names the file and line), the VMM again when it starts (it trusts no caller).

/// Most vCPUs a VM may have (APIC IDs fit in 8 bits; well clear of the broadcast ID).
pub const MAX_VCPUS: u8 = 64;
/// Least guest memory: room for the boot structures, page tables and a small image.
pub const MIN_MEMORY: u64 = 2 << 20;
/// Guest memory is a whole number of pages.
pub const MEMORY_ALIGN: u64 = 4096;
/// Longest guest command line, with what the VMM appends.
pub const MAX_CMDLINE: usize = 64 * 1024;

/// This host's RAM, when the kernel says: what neither a declaration nor the VMM may
/// give one guest more of.
pub fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo only writes the struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a sysinfo struct.
    (unsafe { libc::sysinfo(&mut info) } == 0).then(|| info.totalram as u64 * u64::from(info.mem_unit))
}
