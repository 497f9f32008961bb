//! Guest memory in a snapshot: one file as large as guest RAM, regions back to back, in
//! which only pages the guest ever wrote hold data and every other page is a hole.
//!
//! Saving looks only at pages that can hold something: resident pages of anonymous
//! memory (mincore), plus, for a VM that was itself restored, the data extents of the
//! file it was mapped from (SEEK_DATA); of those, all-zero pages stay holes. Restoring
//! maps the file MAP_PRIVATE: nothing is read until the guest touches a page, and the
//! guest's writes go to private copies, never to the file.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::arch::x86_64::layout::ram_ranges;
use crate::vstate::memory::GuestMemoryMmap;

const PAGE: usize = 4096;

/// Snapshots with at most this much data are copied in at restore; larger ones are mapped.
pub const EAGER_LIMIT: u64 = 64 << 20;

/// Where a VM's memory came from, which decides what saving must look at.
#[derive(Clone, Debug)]
pub enum Origin {
    /// Anonymous memory: untouched pages are not resident.
    Anonymous,
    /// Mapped privately from a snapshot's memory file (kept open).
    File(Arc<File>),
}

/// Pages of `len` bytes at `addr` resident in memory (one flag per page).
fn resident(addr: *mut u8, len: usize) -> io::Result<Vec<bool>> {
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `addr` is the page-aligned start of a live mapping of `len` bytes, and
    // `vec` has one byte per page of it.
    let rc = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.into_iter().map(|b| b & 1 != 0).collect())
}

/// Marks the pages of `[offset, offset + len)` of `file` that hold data (not holes).
fn mark_data_extents(file: &File, offset: u64, len: usize, pages: &mut [bool]) -> io::Result<()> {
    let end = offset + len as u64;
    let mut at = offset;
    while at < end {
        // SAFETY: lseek on an open fd has no memory effects.
        let data = unsafe { libc::lseek(file.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(())
            } else {
                Err(e)
            };
        }
        let data = data as u64;
        if data >= end {
            return Ok(());
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { (hole as u64).min(end) };
        let first = ((data - offset) as usize) / PAGE;
        let last = ((hole - offset) as usize).div_ceil(PAGE);
        let last = last.min(pages.len());
        for p in &mut pages[first.min(last)..last] {
            *p = true;
        }
        at = hole;
    }
    Ok(())
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: any bit pattern is a valid u64.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Writes every non-zero page of `mem` into `out` (which must be empty; it is sized to
/// guest RAM, the rest stays holes). Returns the bytes written. The vCPUs must be
/// paused and no device may write guest memory meanwhile.
pub fn save(mem: &GuestMemoryMmap, origin: &Origin, out: &File) -> io::Result<u64> {
    let mut file_offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let base = region.as_ptr();
        let mut pages = resident(base, len)?;
        if let Origin::File(source) = origin {
            mark_data_extents(source, file_offset, len, &mut pages)?;
        }
        // SAFETY: the region maps `len` bytes at `base` for as long as `mem` lives, and
        // nothing writes it while the VM is paused (the caller's promise).
        let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, len) };
        let mut run: Option<usize> = None; // first page of the run being collected
        for (i, &candidate) in pages.iter().enumerate().chain(std::iter::once((pages.len(), &false))) {
            let keep = candidate && !is_zero(&bytes[i * PAGE..(i + 1) * PAGE]);
            match (keep, run) {
                (true, None) => run = Some(i),
                (false, Some(start)) => {
                    let chunk = &bytes[start * PAGE..i * PAGE];
                    out.write_all_at(chunk, file_offset + (start * PAGE) as u64)?;
                    written += chunk.len() as u64;
                    run = None;
                }
                _ => {}
            }
        }
        file_offset += len as u64;
    }
    out.set_len(file_offset)?;
    Ok(written)
}

/// Guest RAM of `bytes` from a snapshot's memory file: copied or mapped (see the module
/// documentation), with the origin that saving it again must know about.
pub fn open(file: Arc<File>, bytes: u64) -> Result<(GuestMemoryMmap, Origin), String> {
    let mut pages = vec![false; (bytes as usize).div_ceil(PAGE)];
    mark_data_extents(&file, 0, bytes as usize, &mut pages).map_err(|e| format!("memory file: {e}"))?;
    let data = pages.iter().filter(|p| **p).count() as u64 * PAGE as u64;
    if data <= EAGER_LIMIT {
        Ok((load(&file, bytes)?.0, Origin::Anonymous))
    } else {
        Ok((map(file.clone(), bytes)?, Origin::File(file)))
    }
}

/// [`open`] into memory that exists already (a pooled VM's, of the snapshot's size):
/// small snapshots are copied in, large ones mapped over it at the same addresses
/// (`MAP_FIXED`), so the VM's memory slots stay valid (KVM follows the new mapping).
pub fn fill(file: Arc<File>, mem: &GuestMemoryMmap) -> Result<Origin, String> {
    let bytes: u64 = mem.iter().map(|r| r.len()).sum();
    if file.metadata().map_err(|e| format!("memory file: {e}"))?.len() < bytes {
        return Err("the memory file is smaller than guest memory".into());
    }
    let mut pages = vec![false; (bytes as usize).div_ceil(PAGE)];
    mark_data_extents(&file, 0, bytes as usize, &mut pages).map_err(|e| format!("memory file: {e}"))?;
    let data = pages.iter().filter(|p| **p).count() as u64 * PAGE as u64;
    if data <= EAGER_LIMIT {
        copy_into(&file, mem)?;
        return Ok(Origin::Anonymous);
    }
    map_over(&file, mem)?;
    Ok(Origin::File(file))
}

/// Maps `file` privately over `mem`'s regions, at their addresses.
fn map_over(file: &File, mem: &GuestMemoryMmap) -> Result<(), String> {
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: replaces the pages of a mapping `mem` owns, at its own address and
        // length, with a private mapping of the file; no reference into the old pages is
        // alive (the VM has not run), and `mem` unmaps the range when dropped as before.
        let at = unsafe {
            libc::mmap(
                region.as_ptr().cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(format!("cannot map the memory file: {}", io::Error::last_os_error()));
        }
        offset += len as u64;
    }
    Ok(())
}

/// Guest RAM of `bytes` in anonymous memory, with the file's data extents copied in
/// (holes stay untouched, so they cost nothing).
pub fn load(file: &File, bytes: u64) -> Result<(GuestMemoryMmap, u64), String> {
    let mem = crate::vstate::memory::create(contract::size::MemSize::from_bytes(bytes)).map_err(|e| e.to_string())?;
    let copied = copy_into(file, &mem)?;
    Ok((mem, copied))
}

/// Copies the file's data extents into `mem` (fresh anonymous memory); returns the bytes
/// copied.
fn copy_into(file: &File, mem: &GuestMemoryMmap) -> Result<u64, String> {
    let mut offset = 0u64;
    let mut copied = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let base = region.as_ptr();
        let mut pages = vec![false; len.div_ceil(PAGE)];
        mark_data_extents(file, offset, len, &mut pages).map_err(|e| format!("memory file: {e}"))?;
        let mut i = 0;
        while i < pages.len() {
            if !pages[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages.len() && pages[i] {
                i += 1;
            }
            // SAFETY: the region maps `len` bytes at `base`; [start, i) pages lie inside it,
            // and nothing else uses this fresh mapping yet.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.add(start * PAGE), (i - start) * PAGE) };
            file.read_exact_at(dst, offset + (start * PAGE) as u64)
                .map_err(|e| format!("memory file: {e}"))?;
            copied += dst.len() as u64;
        }
        offset += len as u64;
    }
    Ok(copied)
}

/// Guest RAM of `bytes` mapped privately from `file`, regions laid out as at boot.
pub fn map(file: Arc<File>, bytes: u64) -> Result<GuestMemoryMmap, String> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(bytes) {
        let fd = file.try_clone().map_err(|e| format!("memory file: {e}"))?;
        let region = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::new(fd, offset))
            .build()
            .map_err(|e| format!("cannot map the memory file: {e}"))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| "memory region overflows the guest address space".to_string())?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| format!("guest memory layout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    fn tmpfile() -> File {
        let dir = std::env::temp_dir().join(format!("uk-snapmem-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        f
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            .into()
    }

    #[test]
    fn a_file_mapped_over_existing_memory_is_read_there_and_written_privately() {
        let size = 16u64 << 20;
        let mem = crate::vstate::memory::create(contract::size::MemSize::from_bytes(size)).unwrap();
        mem.write_slice(b"old", GuestAddress(0x5000)).unwrap();
        let file = tmpfile();
        file.set_len(size).unwrap();
        file.write_all_at(b"from the file", 0x20_0000).unwrap();
        let before = mem.get_host_address(GuestAddress(0)).unwrap();
        map_over(&file, &mem).unwrap();
        assert_eq!(mem.get_host_address(GuestAddress(0)).unwrap(), before, "same address");
        let mut buf = [0u8; 13];
        mem.read_slice(&mut buf, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&buf, b"from the file");
        let mut old = [1u8; 3];
        mem.read_slice(&mut old, GuestAddress(0x5000)).unwrap();
        assert_eq!(old, [0; 3], "the earlier contents are gone: the file's hole");
        mem.write_slice(b"guest", GuestAddress(0x20_0000)).unwrap();
        let mut on_disk = [0u8; 5];
        file.read_exact_at(&mut on_disk, 0x20_0000).unwrap();
        assert_eq!(&on_disk, b"from ", "the guest's writes stay private");
    }

    #[test]
    fn only_written_pages_are_stored_and_they_come_back() {
        let size = 16u64 << 20;
        let mem = crate::vstate::memory::create(contract::size::MemSize::from_bytes(size)).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0xab; 8192], GuestAddress(0x20_0000)).unwrap();
        mem.write_slice(&[0u8; 4096], GuestAddress(0x30_0000)).unwrap(); // touched, but zero
        let out = tmpfile();
        let written = save(&mem, &Origin::Anonymous, &out).unwrap();
        assert_eq!(written, 3 * PAGE as u64, "two runs: one page and two pages");
        let meta = out.metadata().unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 <= 16 * PAGE as u64,
            "sparse: {} blocks",
            meta.blocks()
        );

        let file = Arc::new(out);
        let back = map(file.clone(), size).unwrap();
        let mut buf = [0u8; 5];
        back.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        // Guest writes stay private: the file keeps what was saved.
        back.write_slice(b"HELLO", GuestAddress(0x1000)).unwrap();
        let mut on_disk = [0u8; 5];
        file.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(&on_disk, b"hello");

        // Copied in instead: the same content, in anonymous memory.
        let (copied, n) = load(&file, size).unwrap();
        assert_eq!(n, 3 * PAGE as u64, "only the data extents are read");
        let mut page = [0u8; 16];
        copied.read_slice(&mut page, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(page, [0xab; 16]);

        // Saving a restored VM keeps what it only ever read from the file.
        let again = tmpfile();
        let written = save(&back, &Origin::File(file), &again).unwrap();
        assert_eq!(written, 3 * PAGE as u64);
        again.read_exact_at(&mut page, 0x20_0000).unwrap();
        assert_eq!(page, [0xab; 16]);
        again.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, b"HELLO");
    }
}
