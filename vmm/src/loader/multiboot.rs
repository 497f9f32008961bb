//! Multiboot (version 1) kernels: what GRUB and QEMU `-kernel` boot, and Unikraft's
//! default KVM target (an ELF32 with a multiboot header). The header is a 32-bit aligned
//! `0x1BADB002, flags, checksum` within the first 8 KiB of the file. With flag 16 (the
//! "a.out kludge") the header says where to load the file and where to enter; otherwise
//! the image is an ELF (32- or 64-bit) loaded by its program headers. Entry is in 32-bit
//! protected mode, paging off, EAX = 0x2BADB002, EBX = the multiboot information.
use std::fs::File;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{read_at, Problem};
use crate::arch::x86_64::layout::{HIMEM_START, MMIO_GAP_START};

pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Where the header may be.
const SEARCH: usize = 8192;
/// Requirements (bits 0-15) we meet: page-aligned modules, memory information, a video
/// mode preference (we have no display: the kernel gets no video information, as from a
/// serial-only GRUB).
const SUPPORTED_REQUIREMENTS: u32 = 0b111;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// More program headers than any kernel has; bounds what we read from an untrusted file.
const MAX_PHDRS: u16 = 128;

/// A multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the header.
    pub offset: usize,
    pub flags: u32,
    /// With the a.out kludge: header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
    pub aout: Option<[u32; 5]>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

fn invalid(msg: impl Into<String>) -> Problem {
    Problem::Invalid(format!("multiboot: {}", msg.into()))
}

/// The multiboot header in `head` (the file's first bytes), if there is a valid one.
pub fn find(head: &[u8]) -> Option<Header> {
    let limit = head.len().min(SEARCH);
    (0..limit.saturating_sub(11)).step_by(4).find_map(|off| {
        if u32_at(head, off) != HEADER_MAGIC {
            return None;
        }
        let flags = u32_at(head, off + 4);
        let checksum = u32_at(head, off + 8);
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            return None;
        }
        let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
            if off + 32 > head.len() {
                return None;
            }
            Some([0, 1, 2, 3, 4].map(|i| u32_at(head, off + 12 + 4 * i)))
        } else {
            None
        };
        Some(Header {
            offset: off,
            flags,
            aout,
        })
    })
}

/// What was loaded, and where to enter.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    /// First byte after the highest loaded or zeroed byte.
    pub end: u64,
}

/// A range the image occupies must be RAM the boot structures do not use.
fn check_range(what: &str, start: u64, end: u64, low_end: u64) -> Result<(), Problem> {
    if start < HIMEM_START {
        return Err(invalid(format!(
            "{what} [{start:#x}, {end:#x}) starts below 1 MiB, where the boot structures live: link the kernel at 0x100000 or above"
        )));
    }
    if end > MMIO_GAP_START || end < start {
        return Err(invalid(format!(
            "{what} [{start:#x}, {end:#x}) lies outside guest memory (RAM below 4 GiB ends at 0xc0000000)"
        )));
    }
    if end > low_end {
        return Err(Problem::NeedsMemory(end));
    }
    Ok(())
}

/// Checks the image against guest RAM `[0, low_end)` and loads it into `mem`.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    file: &File,
    len: u64,
    header: &Header,
    low_end: u64,
) -> Result<Loaded, Problem> {
    let unsupported = header.flags & 0xffff & !SUPPORTED_REQUIREMENTS;
    if unsupported != 0 {
        return Err(invalid(format!(
            "the kernel requires features {unsupported:#x} (header flags {:#x}) that this VMM does not provide",
            header.flags
        )));
    }
    match header.aout {
        Some(fields) => load_aout(mem, file, len, header.offset, fields, low_end),
        None => load_elf(mem, file, len, low_end),
    }
}

/// The a.out kludge: the file, from the header's position back to `load_addr`, goes to
/// `[load_addr, load_end_addr)`; then zeroes up to `bss_end_addr`.
fn load_aout<M: GuestMemoryBackend>(
    mem: &M,
    file: &File,
    len: u64,
    header_offset: usize,
    [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr]: [u32; 5],
    low_end: u64,
) -> Result<Loaded, Problem> {
    let (header_addr, load_addr) = (u64::from(header_addr), u64::from(load_addr));
    let file_start = (header_offset as u64)
        .checked_sub(header_addr.checked_sub(load_addr).ok_or_else(|| {
            invalid(format!(
                "header_addr {header_addr:#x} is below load_addr {load_addr:#x}"
            ))
        })?)
        .ok_or_else(|| invalid("load_addr lies before the start of the file"))?;
    let load_end = match load_end_addr {
        0 => load_addr + (len - file_start),
        e => u64::from(e),
    };
    if load_end < load_addr || file_start + (load_end - load_addr) > len {
        return Err(invalid(format!(
            "load_end_addr {load_end:#x} asks for more than the file holds ({len} bytes)"
        )));
    }
    let end = match bss_end_addr {
        0 => load_end,
        b => u64::from(b).max(load_end),
    };
    check_range("the image", load_addr, end, low_end)?;
    let entry = u64::from(entry_addr);
    if !(load_addr..load_end).contains(&entry) {
        return Err(invalid(format!(
            "entry_addr {entry:#x} is not inside the loaded image [{load_addr:#x}, {load_end:#x})"
        )));
    }
    copy(mem, file, file_start, load_addr, load_end - load_addr)?;
    zero(mem, load_end, end - load_end)?;
    Ok(Loaded { entry, end })
}

/// An ELF32 or ELF64 image, by its PT_LOAD program headers (physical addresses).
fn load_elf<M: GuestMemoryBackend>(mem: &M, file: &File, len: u64, low_end: u64) -> Result<Loaded, Problem> {
    let mut ehdr = [0u8; 64];
    let n = read_at(file, 0, &mut ehdr).map_err(|e| invalid(e.to_string()))?;
    if n < 52 || !ehdr.starts_with(b"\x7fELF") {
        return Err(invalid(
            "the image is neither an ELF nor has an a.out kludge (header flag 16): nothing says where to load it",
        ));
    }
    let class64 = match ehdr[4] {
        1 => false,
        2 if n == 64 => true,
        _ => return Err(invalid("unknown ELF class")),
    };
    if ehdr[5] != 1 || !matches!(u16_at(&ehdr, 18), 3 | 62) {
        return Err(invalid("not a little-endian x86 ELF (EM_386 or EM_X86_64)"));
    }
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            u64_at(&ehdr, 24),
            u64_at(&ehdr, 32),
            u16_at(&ehdr, 54),
            u16_at(&ehdr, 56),
        )
    } else {
        (
            u64::from(u32_at(&ehdr, 24)),
            u64::from(u32_at(&ehdr, 28)),
            u16_at(&ehdr, 42),
            u16_at(&ehdr, 44),
        )
    };
    let want = if class64 { 56 } else { 32 };
    if usize::from(phentsize) != want || phnum == 0 || phnum > MAX_PHDRS {
        return Err(invalid(format!(
            "{phnum} program headers of {phentsize} bytes: expected 1 to {MAX_PHDRS} of {want}"
        )));
    }
    let bytes = u64::from(phnum) * u64::from(phentsize);
    if phoff.checked_add(bytes).is_none_or(|e| e > len) {
        return Err(invalid("truncated ELF: program headers end past the end of the file"));
    }
    let mut phdrs = vec![0u8; bytes as usize];
    read_at(file, phoff, &mut phdrs).map_err(|e| invalid(e.to_string()))?;
    let mut segments = Vec::new();
    for (i, ph) in phdrs.chunks_exact(want).enumerate() {
        if u32_at(ph, 0) != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = if class64 {
            (u64_at(ph, 8), u64_at(ph, 24), u64_at(ph, 32), u64_at(ph, 40))
        } else {
            (
                u64::from(u32_at(ph, 4)),
                u64::from(u32_at(ph, 12)),
                u64::from(u32_at(ph, 16)),
                u64::from(u32_at(ph, 20)),
            )
        };
        if memsz == 0 {
            continue;
        }
        if filesz > memsz || offset.checked_add(filesz).is_none_or(|e| e > len) {
            return Err(invalid(format!(
                "segment {i}: file bytes [{offset:#x}, +{filesz:#x}) or memory size {memsz:#x} do not fit the {len}-byte file"
            )));
        }
        let end = paddr
            .checked_add(memsz)
            .ok_or_else(|| invalid(format!("segment {i}: address overflows")))?;
        check_range(&format!("segment {i}"), paddr, end, low_end)?;
        segments.push((offset, paddr, filesz, memsz));
    }
    if segments.is_empty() {
        return Err(invalid("no loadable (PT_LOAD) segment"));
    }
    if !segments.iter().any(|&(_, p, _, m)| (p..p + m).contains(&entry)) || entry >= 1 << 32 {
        return Err(invalid(format!(
            "entry point {entry:#x} is not inside a loadable segment below 4 GiB"
        )));
    }
    let mut end = 0;
    for (offset, paddr, filesz, memsz) in segments {
        copy(mem, file, offset, paddr, filesz)?;
        zero(mem, paddr + filesz, memsz - filesz)?;
        end = end.max(paddr + memsz);
    }
    Ok(Loaded { entry, end })
}

fn copy<M: GuestMemoryBackend>(mem: &M, file: &File, offset: u64, addr: u64, len: u64) -> Result<(), Problem> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let got = read_at(file, offset + done, &mut buf[..n]).map_err(|e| invalid(e.to_string()))?;
        if got < n {
            return Err(invalid("the file ended while loading it"));
        }
        mem.write_slice(&buf[..n], GuestAddress(addr + done))
            .map_err(|e| invalid(format!("cannot write guest memory at {:#x}: {e}", addr + done)))?;
        done += n as u64;
    }
    Ok(())
}

fn zero<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> Result<(), Problem> {
    let page = [0u8; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(page.len() as u64) as usize;
        mem.write_slice(&page[..n], GuestAddress(addr + done))
            .map_err(|e| invalid(format!("cannot write guest memory at {:#x}: {e}", addr + done)))?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, extra: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8; 16]; // something before it, still 4-aligned
        for w in [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)]
            .iter()
            .chain(extra)
        {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    #[test]
    fn finds_a_valid_header_and_ignores_bad_checksums_and_misalignment() {
        let h = find(&header(0x3, &[])).unwrap();
        assert_eq!((h.offset, h.flags, h.aout), (16, 3, None));
        let mut bad = header(0x3, &[]);
        bad[24] ^= 1;
        assert_eq!(find(&bad), None, "checksum");
        let mut shifted = vec![0u8; 2];
        shifted.extend(header(0x3, &[]));
        assert_eq!(find(&shifted), None, "not 4-byte aligned");
        let far = [vec![0u8; SEARCH], header(0x3, &[])].concat();
        assert_eq!(find(&far), None, "past the first 8 KiB");
        let aout = find(&header(0x1_0003, &[0x100010, 0x100000, 0, 0, 0x100020])).unwrap();
        assert_eq!(aout.aout, Some([0x100010, 0x100000, 0, 0, 0x100020]));
        assert_eq!(find(&header(0x1_0003, &[1, 2])), None, "a.out fields cut off");
    }

    #[test]
    fn requirements_we_cannot_meet_are_refused_by_name() {
        let mem = crate::vstate::memory::create(crate::config::MemSize::from_bytes(4 << 20)).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let h = Header {
            offset: 0,
            flags: 1 << 3,
            aout: None,
        };
        let Err(Problem::Invalid(msg)) = load(&mem, &file, 0, &h, 4 << 20) else {
            panic!("accepted")
        };
        assert!(msg.contains("requires features 0x8"), "{msg}");
    }
}
