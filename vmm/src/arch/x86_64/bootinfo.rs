//! What the VMM hands a kernel at entry: the command line, the memory map, the initrd,
//! as a PVH `hvm_start_info` or a Linux `boot_params` zero page.
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::*;

const E820_RAM: u32 = 1;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write the command line to guest memory")]
    WriteCmdline,
    #[error("cannot write the boot information to guest memory: {0}")]
    Configure(#[from] linux_loader::configurator::Error),
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// The guest's RAM as (start, length) pairs for the memory map.
pub(crate) fn ram_map(mem_size: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START));
    }
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`]; returns its length.
pub fn write_cmdline<M: GuestMemoryBackend>(mem: &M, cmdline: &str) -> Result<usize, Error> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::CmdlineNul);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| Error::WriteCmdline)?;
    Ok(cmdline.len())
}

/// Writes `hvm_start_info`, its memory map and module list for a PVH entry.
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    initrd: Option<InitrdPlacement>,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = ram_map(mem_size)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST_START },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

/// Writes the Linux zero page. `header` is the bzImage setup header, if the kernel has one.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    header: Option<setup_header>,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    for (n, (addr, size)) in ram_map(mem_size).into_iter().take(E820_MAX_ENTRIES).enumerate() {
        params.e820_table[n] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
        params.e820_entries = n as u8 + 1;
    }
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn ram_map_skips_ebda_and_mmio_gap() {
        assert_eq!(
            ram_map(16 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (16 << 20) - HIMEM_START)]
        );
        let big = 5u64 << 30;
        assert_eq!(
            ram_map(big),
            vec![
                (0, EBDA_START),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START),
                (MMIO_GAP_END, big - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn zero_page_has_the_boot_protocol_magic_and_cmdline() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let len = write_cmdline(&mem, "console=ttyS0 name=web").unwrap();
        write_zero_page(&mem, 16 << 20, len, None, None).unwrap();
        let at = |off: u64| GuestAddress(ZERO_PAGE_START + off);
        assert_eq!(mem.read_obj::<u16>(at(0x1fe)).unwrap(), 0xaa55);
        assert_eq!(&mem.read_obj::<[u8; 4]>(at(0x202)).unwrap(), b"HdrS");
        assert_eq!(mem.read_obj::<u32>(at(0x228)).unwrap() as u64, CMDLINE_START);
        assert_eq!(mem.read_obj::<u32>(at(0x238)).unwrap() as usize, len);
        assert_eq!(mem.read_obj::<u8>(at(0x1e8)).unwrap(), 2, "e820 entries");
        let mut buf = vec![0u8; len + 1];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf[..len], b"console=ttyS0 name=web");
        assert_eq!(buf[len], 0);
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_and_memmap() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_pvh_start_info(
            &mem,
            16 << 20,
            Some(InitrdPlacement {
                addr: 0xf00000,
                size: 0x1000,
            }),
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0xf00000, 0x1000));
    }

    #[test]
    fn rejects_bad_command_lines() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        assert!(matches!(write_cmdline(&mem, "a\0b"), Err(Error::CmdlineNul)));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(write_cmdline(&mem, &long), Err(Error::CmdlineTooLong { .. })));
    }
}
