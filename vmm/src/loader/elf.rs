//! ELF64 headers, read only as far as needed to refuse bad images with a clear reason.
use std::fs::File;

use super::{read_at, Problem};
use crate::arch::x86_64::layout::HIMEM_START;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
/// More program headers than any kernel has; bounds what we read from an untrusted file.
const MAX_PHDRS: u16 = 128;

pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Longest note segment we read.
const MAX_NOTES: u64 = 64 * 1024;

/// Whether an ELF64 image carries the PVH entry note (`Xen`, type 18), which makes PVH the
/// protocol even when the image also has a multiboot header. Unreadable means no.
pub fn has_pvh_note(file: &File, len: u64) -> bool {
    let mut ehdr = [0u8; EHDR_SIZE];
    if read_at(file, 0, &mut ehdr).ok() != Some(EHDR_SIZE) || ehdr[4] != ELFCLASS64 {
        return false;
    }
    let (phoff, phentsize, phnum) = (u64_at(&ehdr, 32), u16_at(&ehdr, 54), u16_at(&ehdr, 56));
    if usize::from(phentsize) != PHDR_SIZE || phnum > MAX_PHDRS {
        return false;
    }
    let mut phdrs = vec![0u8; usize::from(phnum) * PHDR_SIZE];
    if phoff.checked_add(phdrs.len() as u64).is_none_or(|e| e > len) || read_at(file, phoff, &mut phdrs).is_err() {
        return false;
    }
    phdrs.chunks_exact(PHDR_SIZE).any(|ph| {
        let (offset, size) = (u64_at(ph, 8), u64_at(ph, 32).min(MAX_NOTES));
        if u32_at(ph, 0) != PT_NOTE || offset.checked_add(size).is_none_or(|e| e > len) {
            return false;
        }
        let mut notes = vec![0u8; size as usize];
        if read_at(file, offset, &mut notes).is_err() {
            return false;
        }
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (
                u32_at(&notes, at) as usize,
                u32_at(&notes, at + 4) as usize,
                u32_at(&notes, at + 8),
            );
            let name_end = at + 12 + namesz;
            if name_end > notes.len() {
                return false;
            }
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes[at + 12..name_end].starts_with(b"Xen") {
                return true;
            }
            at = name_end.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
        false
    })
}

/// The loadable extent of a checked image.
#[derive(Debug)]
pub struct Summary {
    pub entry: u64,
    pub end: u64,
    segments: Vec<(u64, u64)>,
}

impl Summary {
    pub fn contains(&self, addr: u64) -> bool {
        self.segments.iter().any(|&(start, end)| (start..end).contains(&addr))
    }
}

fn invalid(msg: impl Into<String>) -> Problem {
    Problem::Invalid(msg.into())
}

/// Checks an ELF image of `len` bytes against guest RAM `[0, low_end)`.
pub fn inspect(file: &File, len: u64, low_end: u64) -> Result<Summary, Problem> {
    let mut ehdr = [0u8; EHDR_SIZE];
    let n = read_at(file, 0, &mut ehdr).map_err(|e| invalid(e.to_string()))?;
    if n < EHDR_SIZE {
        return Err(invalid(format!(
            "truncated ELF: the file is {len} bytes, shorter than an ELF64 header"
        )));
    }
    if ehdr[4] != ELFCLASS64 {
        return Err(invalid("32-bit ELF: only ELF64 x86-64 kernels can be booted"));
    }
    if ehdr[5] != ELFDATA2LSB || u16_at(&ehdr, 18) != EM_X86_64 {
        return Err(invalid("not an x86-64 ELF: build the kernel for x86_64"));
    }
    if u16_at(&ehdr, 16) != ET_EXEC {
        return Err(invalid(
            "not an executable ELF (ET_EXEC): link the kernel statically at a fixed address",
        ));
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(invalid(format!(
            "program header size is {phentsize}, expected {PHDR_SIZE}"
        )));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(invalid(format!("{phnum} program headers: expected 1 to {MAX_PHDRS}")));
    }
    let ph_bytes = u64::from(phnum) * PHDR_SIZE as u64;
    if phoff.checked_add(ph_bytes).is_none_or(|end| end > len) {
        return Err(invalid(format!(
            "truncated ELF: program headers end past the end of the file ({len} bytes)"
        )));
    }
    let mut phdrs = vec![0u8; ph_bytes as usize];
    read_at(file, phoff, &mut phdrs).map_err(|e| invalid(e.to_string()))?;

    let mut segments = Vec::new();
    let mut needed = 0u64;
    for (i, ph) in phdrs.chunks_exact(PHDR_SIZE).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (u64_at(ph, 8), u64_at(ph, 24), u64_at(ph, 32), u64_at(ph, 40));
        if memsz == 0 {
            continue; // zero-sized segments carry nothing
        }
        if filesz > memsz {
            return Err(invalid(format!(
                "segment {i}: file size {filesz:#x} exceeds memory size {memsz:#x}"
            )));
        }
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(invalid(format!(
                "truncated ELF: segment {i} needs file bytes up to {:#x} but the file is {len} bytes",
                offset.saturating_add(filesz)
            )));
        }
        let end = paddr
            .checked_add(memsz)
            .ok_or_else(|| invalid(format!("segment {i}: address {paddr:#x} + size {memsz:#x} overflows")))?;
        if paddr < HIMEM_START {
            return Err(invalid(format!(
                "segment {i} [{paddr:#x}, {end:#x}) starts below 1 MiB, where the boot structures live: link the kernel at 0x100000 or above"
            )));
        }
        if end > crate::arch::x86_64::layout::MMIO_GAP_START {
            return Err(invalid(format!(
                "segment {i} [{paddr:#x}, {end:#x}) lies outside guest memory (RAM below 4 GiB ends at 0xc0000000): link the kernel lower"
            )));
        }
        needed = needed.max(end);
        segments.push((paddr, end));
    }
    if segments.is_empty() {
        return Err(invalid("no loadable (PT_LOAD) segment"));
    }
    if needed > low_end {
        return Err(Problem::NeedsMemory(needed));
    }
    Ok(Summary {
        entry,
        end: needed,
        segments,
    })
}
