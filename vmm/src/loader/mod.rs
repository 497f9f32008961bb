//! Kernel images: recognise the format, refuse what cannot boot (before any VM exists),
//! then load it into guest memory with linux-loader.
//!
//! Formats, in the order they are tried:
//! - ELF64 x86-64 with a `XEN_ELFNOTE_PHYS32_ENTRY` note: PVH boot;
//! - anything with a multiboot (v1) header in its first 8 KiB (ELF32, ELF64 without a
//!   PVH note, or a flat image with the a.out kludge): multiboot;
//! - ELF64 x86-64 without it: the 64-bit Linux boot protocol at `e_entry` (vmlinux,
//!   Unikraft's Firecracker images);
//! - bzImage: the 64-bit Linux boot protocol at the protected-mode kernel + 0x200.
mod bzimage;
mod elf;
mod multiboot;

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::x86_64::bootinfo::InitrdPlacement;
use crate::arch::x86_64::layout::{low_ram_end, HIMEM_START};
use crate::arch::x86_64::regs::BootMode;
use crate::config::MemSize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a kernel image: expected an ELF64 x86-64 kernel (PVH or vmlinux), a multiboot kernel or a bzImage"
    )]
    NotAKernel { path: PathBuf },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error(
        "{path} needs at least {needed} of guest memory but --memory is {memory}: raise --memory to {needed} or more"
    )]
    MemoryTooSmall {
        path: PathBuf,
        needed: MemSize,
        memory: MemSize,
    },
    #[error("{path}: loading failed: {source}")]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel: raise --memory")]
    InitrdTooLarge { path: PathBuf, size: u64 },
}

/// A kernel in guest memory, and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub mode: BootMode,
    pub entry: u64,
    /// First byte after the kernel's highest segment.
    pub end: u64,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// A problem found while inspecting an image, before the file name is attached.
#[derive(Debug)]
pub(crate) enum Problem {
    Invalid(String),
    /// The image is fine but needs this much memory.
    NeedsMemory(u64),
}

fn open(path: &Path) -> Result<(File, u64), Error> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, meta) = open_regular(path).map_err(io_err)?;
    Ok((file, meta.len()))
}

/// Opens a file the VMM reads (an image, a snapshot's files) only if it is a regular
/// file. O_NONBLOCK: opening a FIFO must not block the VMM until a writer comes (a
/// service would sit in `booting` for ever).
pub(crate) fn open_regular(path: &Path) -> io::Result<(File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO or device)",
        ));
    }
    Ok((file, meta))
}

/// Reads up to `buf.len()` bytes at `offset`; short reads near the end of file are fine.
pub(crate) fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Checks `path` and loads it into `mem` (of `mem_size` bytes).
pub fn load_kernel<M: GuestMemoryBackend>(mem: &M, path: &Path, mem_size: MemSize) -> Result<LoadedKernel, Error> {
    let (mut file, len) = open(path)?;
    let mut head = [0u8; 8192];
    let n = read_at(&file, 0, &mut head).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    let head = &head[..n];
    let low_end = low_ram_end(mem_size.bytes());

    let attach = |problem: Problem| match problem {
        Problem::Invalid(p) => Error::Invalid {
            path: path.into(),
            problem: p,
        },
        Problem::NeedsMemory(needed) => Error::MemoryTooSmall {
            path: path.into(),
            needed: MemSize::from_bytes(needed.next_multiple_of(MemSize::MIB)),
            memory: mem_size,
        },
    };
    let load_err = |source| Error::Load {
        path: path.into(),
        source,
    };

    let pvh_note = elf::is_elf(head) && elf::has_pvh_note(&file, len);
    if let (Some(header), false) = (multiboot::find(head), pvh_note) {
        let loaded = multiboot::load(mem, &file, len, &header, low_end).map_err(attach)?;
        return Ok(LoadedKernel {
            mode: BootMode::Multiboot,
            entry: loaded.entry,
            end: loaded.end,
            setup_header: None,
        });
    }
    if elf::is_elf(head) {
        let summary = elf::inspect(&file, len, low_end).map_err(attach)?;
        let result = Elf::load(mem, None, &mut file, None).map_err(load_err)?;
        let (mode, entry) = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (BootMode::Pvh, addr.0),
            _ => (BootMode::Linux64, summary.entry),
        };
        if !summary.contains(entry) {
            return Err(attach(Problem::Invalid(format!(
                "entry point {entry:#x} is not inside any loadable segment"
            ))));
        }
        return Ok(LoadedKernel {
            mode,
            entry,
            end: summary.end,
            setup_header: None,
        });
    }
    if bzimage::is_bzimage(head) {
        bzimage::inspect(head, len, low_end).map_err(attach)?;
        let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        return Ok(LoadedKernel {
            mode: BootMode::Linux64,
            entry: result.kernel_load.0 + bzimage::STARTUP_64_OFFSET,
            end: result.kernel_end,
            setup_header: result.setup_header,
        });
    }
    Err(Error::NotAKernel { path: path.into() })
}

/// Loads an initrd at the top of low memory, page aligned, above `kernel_end`.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    mem_size: MemSize,
    kernel_end: u64,
) -> Result<InitrdPlacement, Error> {
    let (mut file, size) = open(path)?;
    let too_large = || Error::InitrdTooLarge {
        path: path.into(),
        size,
    };
    // Linux's default initrd_addr_max: keep it below 896 MiB.
    let top = low_ram_end(mem_size.bytes()).min(0x3800_0000);
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| Error::Io {
            path: path.into(),
            source: io::Error::other(e.to_string()),
        })?;
    Ok(InitrdPlacement { addr, size })
}
