//! bzImage setup header checks (Documentation/arch/x86/boot.rst).
use super::Problem;
use crate::arch::x86_64::layout::HIMEM_START;

/// The 64-bit entry (`startup_64`) sits 0x200 bytes into the protected-mode kernel.
pub const STARTUP_64_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
/// 2.12: `xloadflags` and the 64-bit entry are defined.
const MIN_PROTOCOL: u16 = 0x020c;

pub fn is_bzimage(head: &[u8]) -> bool {
    head.len() >= 0x270 && head[0x1fe..0x200] == [0x55, 0xaa] && &head[0x202..0x206] == b"HdrS"
}

/// Checks the protocol version, the 64-bit entry, and that `init_size` fits in memory.
pub fn inspect(head: &[u8], len: u64, low_end: u64) -> Result<(), Problem> {
    let u16_at = |off: usize| u16::from_le_bytes([head[off], head[off + 1]]);
    let u32_at = |off: usize| u32::from_le_bytes([head[off], head[off + 1], head[off + 2], head[off + 3]]);
    let version = u16_at(0x206);
    if version < MIN_PROTOCOL {
        return Err(Problem::Invalid(format!(
            "bzImage boot protocol {}.{} is too old: 2.12 or later is needed for the 64-bit entry",
            version >> 8,
            version & 0xff
        )));
    }
    if u16_at(0x236) & XLF_KERNEL_64 == 0 {
        return Err(Problem::Invalid(
            "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)".into(),
        ));
    }
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    if (setup_sects + 1) * 512 >= len {
        return Err(Problem::Invalid(format!(
            "truncated bzImage: {len} bytes, no protected-mode kernel after the setup code"
        )));
    }
    let code32_start = u64::from(u32_at(0x214));
    if code32_start < HIMEM_START {
        return Err(Problem::Invalid(format!(
            "bzImage loads at {code32_start:#x}, below 1 MiB"
        )));
    }
    let kernel_size = len - (setup_sects + 1) * 512;
    let needed = code32_start + u64::from(u32_at(0x260)).max(kernel_size);
    if needed > low_end {
        return Err(Problem::NeedsMemory(needed));
    }
    Ok(())
}
