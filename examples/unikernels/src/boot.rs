//! Boot information handed over by the boot protocols.

/// What a program gets from the VMM, whichever way it was entered.
pub struct BootInfo {
    /// The kernel command line, without its NUL terminator.
    pub cmdline: &'static [u8],
    /// Which protocol brought us here.
    pub protocol: Protocol,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot,
    Linux64,
}

const MAX_CMDLINE: usize = 64 * 1024;
const PVH_MAGIC: u32 = 0x336e_c578;

/// A NUL-terminated string in identity-mapped guest memory, bounded.
///
/// # Safety
/// `addr` must be 0 or point to readable memory up to its NUL or `MAX_CMDLINE` bytes.
unsafe fn c_str(addr: u64) -> &'static [u8] {
    if addr == 0 {
        return &[];
    }
    let p = addr as *const u8;
    let mut len = 0;
    while len < MAX_CMDLINE && *p.add(len) != 0 {
        len += 1;
    }
    core::slice::from_raw_parts(p, len)
}

/// # Safety
/// `start_info` is the `hvm_start_info` pointer the PVH protocol passes in EBX.
pub unsafe fn from_pvh(start_info: u64) -> BootInfo {
    let base = start_info as *const u8;
    let magic = (base as *const u32).read_unaligned();
    let cmdline = if magic == PVH_MAGIC {
        c_str((base.add(24) as *const u64).read_unaligned())
    } else {
        &[]
    };
    BootInfo {
        cmdline,
        protocol: Protocol::Pvh,
    }
}

/// What a multiboot loader puts in EAX.
const MULTIBOOT_MAGIC: u32 = 0x2bad_b002;

/// # Safety
/// `info` is the multiboot information address a loader passed in EBX (with `magic` from
/// EAX); it is read only when the magic says a multiboot loader started us.
pub unsafe fn from_multiboot(info: u64, magic: u32) -> BootInfo {
    let base = info as *const u8;
    let cmdline = if magic == MULTIBOOT_MAGIC && (base as *const u32).read_unaligned() & (1 << 2) != 0 {
        c_str(u64::from((base.add(16) as *const u32).read_unaligned()))
    } else {
        &[]
    };
    BootInfo {
        cmdline,
        protocol: Protocol::Multiboot,
    }
}

/// # Safety
/// `zero_page` is the `boot_params` pointer the 64-bit Linux boot protocol passes in RSI.
pub unsafe fn from_linux(zero_page: u64) -> BootInfo {
    let base = zero_page as *const u8;
    let lo = u64::from((base.add(0x228) as *const u32).read_unaligned());
    let hi = u64::from((base.add(0x0c8) as *const u32).read_unaligned());
    BootInfo {
        cmdline: c_str(hi << 32 | lo),
        protocol: Protocol::Linux64,
    }
}

impl BootInfo {
    /// The kernel's part of the command line and the application's (after ` -- `), as
    /// Linux and Unikraft split it.
    fn parts(&self) -> (&'static str, Option<&'static str>) {
        let cmdline = core::str::from_utf8(self.cmdline).unwrap_or("");
        if let Some(app) = cmdline.strip_prefix("-- ") {
            return ("", Some(app));
        }
        match cmdline.split_once(" -- ") {
            Some((kernel, app)) => (kernel, Some(app)),
            None => (cmdline.strip_suffix(" --").unwrap_or(cmdline), None),
        }
    }

    /// The value of `key=value` among the kernel parameters (before ` -- `), if present.
    pub fn param(&self, key: &str) -> Option<&'static str> {
        self.parts()
            .0
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// The application's arguments (after ` -- `), if the command line has them.
    pub fn app_args(&self) -> Option<&'static str> {
        self.parts().1
    }
}
