//! The multiboot (v1) information structure a multiboot kernel finds in EBX: memory sizes
//! and map, the command line, the initrd as a module, and the boot loader's name. It
//! occupies the places PVH uses (a VM boots one protocol).
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::bootinfo::{ram_map, InitrdPlacement};
use super::layout::{low_ram_end, CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START};

/// What a multiboot kernel finds in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The information structure (EBX), the module list, the name, the memory map.
pub const INFO_START: u64 = PVH_INFO_START;
const MODS_START: u64 = INFO_START + 0x100;
const NAME_START: u64 = INFO_START + 0x200;
const MMAP_START: u64 = PVH_MEMMAP_START;
const BOOT_LOADER_NAME: &[u8] = b"unikernel-vmm\0";

const FLAG_MEM: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_LOADER_NAME: u32 = 1 << 9;
/// Size of `struct multiboot_info` up to and including `boot_loader_name`.
const INFO_LEN: usize = 68;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the multiboot information to guest memory at {0:#x}")]
pub struct Error(u64);

fn put<M: GuestMemoryBackend>(mem: &M, addr: u64, bytes: &[u8]) -> Result<(), Error> {
    mem.write_slice(bytes, GuestAddress(addr)).map_err(|_| Error(addr))
}

/// Writes the structure for a VM of `mem_size` bytes.
pub fn write<M: GuestMemoryBackend>(mem: &M, mem_size: u64, initrd: Option<InitrdPlacement>) -> Result<(), Error> {
    let mut info = [0u8; INFO_LEN];
    let mut set = |off: usize, v: u32| info[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let kib = |b: u64| u32::try_from(b / 1024).unwrap_or(u32::MAX);
    let mut flags = FLAG_MEM | FLAG_CMDLINE | FLAG_MMAP | FLAG_LOADER_NAME;
    set(4, kib(EBDA_START));
    set(8, kib(low_ram_end(mem_size).saturating_sub(HIMEM_START)));
    set(16, CMDLINE_START as u32);
    if let Some(i) = initrd {
        flags |= FLAG_MODS;
        set(20, 1);
        set(24, MODS_START as u32);
        // mod_start, mod_end, string (an empty one: the name's terminating NUL), reserved.
        let empty = NAME_START + BOOT_LOADER_NAME.len() as u64 - 1;
        let mut m = [0u8; 16];
        m[0..4].copy_from_slice(&(i.addr as u32).to_le_bytes());
        m[4..8].copy_from_slice(&((i.addr + i.size) as u32).to_le_bytes());
        m[8..12].copy_from_slice(&(empty as u32).to_le_bytes());
        put(mem, MODS_START, &m)?;
    }
    let mut mmap = Vec::new();
    for (addr, len) in ram_map(mem_size) {
        mmap.extend_from_slice(&20u32.to_le_bytes()); // the entry's size, not counting itself
        mmap.extend_from_slice(&addr.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&1u32.to_le_bytes()); // available RAM
    }
    set(44, mmap.len() as u32);
    set(48, MMAP_START as u32);
    set(64, NAME_START as u32);
    set(0, flags);
    put(mem, MMAP_START, &mmap)?;
    put(mem, NAME_START, BOOT_LOADER_NAME)?;
    put(mem, INFO_START, &info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn the_structure_says_what_the_spec_says() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x80_0000,
            size: 0x1000,
        };
        super::write(&mem, 16 << 20, Some(initrd)).unwrap();
        let at = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).unwrap();
        let flags = at(INFO_START);
        assert_eq!(
            flags,
            FLAG_MEM | FLAG_CMDLINE | FLAG_MODS | FLAG_MMAP | FLAG_LOADER_NAME
        );
        assert_eq!(at(INFO_START + 4), 639, "KiB below the EBDA");
        assert_eq!(at(INFO_START + 8), 15 * 1024, "KiB from 1 MiB to the end of RAM");
        assert_eq!(at(INFO_START + 16) as u64, CMDLINE_START);
        assert_eq!(
            (at(INFO_START + 20), at(MODS_START), at(MODS_START + 4)),
            (1, 0x80_0000, 0x80_1000)
        );
        let (len, map) = (at(INFO_START + 44), at(INFO_START + 48) as u64);
        assert_eq!(len, 2 * 24, "two RAM ranges of 4 + 20 bytes");
        assert_eq!(at(map), 20);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(map + 4)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(map + 24 + 4)).unwrap(), HIMEM_START);
        let mut name = [0u8; 14];
        mem.read_slice(&mut name, GuestAddress(at(INFO_START + 64) as u64))
            .unwrap();
        assert_eq!(&name, BOOT_LOADER_NAME);
    }
}
