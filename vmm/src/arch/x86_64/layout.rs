//! Guest physical memory layout (the same places Firecracker uses, so guests built for
//! it find things where they expect them).

/// Boot GDT, and an empty IDT right after it.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, its module list and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit Linux entry: PML4, PDPT, then 4 page directories.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line; [`CMDLINE_MAX_SIZE`] includes the NUL terminator.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = contract::limits::MAX_CMDLINE;
/// End of conventional low memory (the EBDA starts here) and start of high memory.
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x100000;
/// The 32-bit MMIO hole: RAM above this is placed at 4 GiB instead.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// virtio-mmio devices: 4 KiB windows from here, one per device, inside the MMIO gap.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Their interrupts: GSI 5, 6, ... (ISA IRQs the PIC and IOAPIC both route).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Where KVM on Intel keeps its real-mode TSS (three pages, inside the MMIO gap).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Smallest memory that holds the boot structures and a kernel at 1 MiB.
pub const MIN_MEMORY: u64 = 2 << 20;

/// The RAM ranges (guest address, length) for a VM with `mem_size` bytes of memory.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
    }
}

/// End (exclusive) of the RAM that starts at 0.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_mmio_gap() {
        assert_eq!(ram_ranges(16 << 20), vec![(0, 16 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)]
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let ranges = [
            (BOOT_GDT_START, BOOT_IDT_START - BOOT_GDT_START),
            (PVH_INFO_START, 0x1000),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 4 * 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        // PVH and Linux structures share 0x7000 by design: only one protocol is used.
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                let overlap = a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
                assert!(
                    !overlap || (a.0 == ZERO_PAGE_START || b.0 == ZERO_PAGE_START),
                    "{a:x?} {b:x?}"
                );
            }
        }
        const { assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START) };
        const { assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START) };
    }
}
