//! Initial vCPU register state for the two ways a kernel is entered.
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{self, kvm_segment_from_gdt};
use super::layout::*;

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits: present, writable, 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PTE_HUGE: u64 = 0x80;
/// Page directories for the identity map: 4 GiB in 2 MiB pages.
const IDENTITY_MAPPED_GIB: u64 = 4;

/// How the boot vCPU starts executing the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// PVH: 32-bit protected mode, paging off, `hvm_start_info` in EBX.
    Pvh,
    /// 64-bit Linux boot protocol: long mode on identity page tables, `boot_params` in RSI.
    Linux64,
    /// Multiboot v1: 32-bit protected mode, paging off, the magic in EAX, the multiboot
    /// information in EBX.
    Multiboot,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the boot GDT/IDT to guest memory")]
    WriteGdt,
    #[error("cannot write the identity page tables to guest memory")]
    WritePageTables,
}

/// General-purpose registers at entry.
pub fn boot_regs(mode: BootMode, entry: u64) -> kvm_regs {
    match mode {
        BootMode::Pvh => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootMode::Multiboot => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rax: u64::from(super::multiboot_info::BOOTLOADER_MAGIC),
            rbx: super::multiboot_info::INFO_START,
            ..Default::default()
        },
        BootMode::Linux64 => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the boot GDT/IDT (and for Linux64 the page tables) and fills `sregs` to match.
pub fn setup_sregs<M: GuestMemoryBackend>(mem: &M, mode: BootMode, sregs: &mut kvm_sregs) -> Result<(), Error> {
    let code = match mode {
        BootMode::Pvh | BootMode::Multiboot => gdt::CODE32,
        BootMode::Linux64 => gdt::CODE64,
    };
    let table = gdt::boot_gdt(code);
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(|_| Error::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| Error::WriteGdt)?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let cs = kvm_segment_from_gdt(table[1], 1);
    let ds = kvm_segment_from_gdt(table[2], 2);
    sregs.cs = cs;
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = kvm_segment_from_gdt(table[3], 3);

    match mode {
        BootMode::Pvh | BootMode::Multiboot => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootMode::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// Identity-maps the first 4 GiB with 2 MiB pages (PML4 -> PDPT -> 4 page directories).
fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), Error> {
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|_| Error::WritePageTables)
    };
    w(PDPTE_START | PTE_PRESENT_RW, PML4_START)?;
    let mut pd = [0u8; 4096];
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd_addr = PDE_START + gib * 0x1000;
        w(pd_addr | PTE_PRESENT_RW, PDPTE_START + gib * 8)?;
        for (i, e) in pd.chunks_exact_mut(8).enumerate() {
            let entry = ((gib << 30) + ((i as u64) << 21)) | PTE_HUGE | PTE_PRESENT_RW;
            e.copy_from_slice(&entry.to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))
            .map_err(|_| Error::WritePageTables)?;
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Routes LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware would.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let mut set = |reg: usize, mode: u32| {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    };
    set(APIC_LVT0, APIC_MODE_EXTINT);
    set(APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn linux64_sregs_enable_long_mode_and_map_memory() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, BootMode::Linux64, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        // 0xd0000000 (virtio-mmio) is mapped by the fourth directory.
        let pde: u64 = m.read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 128 * 8)).unwrap();
        assert_eq!(pde & !0xfff, 0xd000_0000);
    }

    #[test]
    fn pvh_sregs_are_32bit_protected_without_paging() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, BootMode::Pvh, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
        assert_eq!(sregs.efer, 0);
        assert_eq!(boot_regs(BootMode::Pvh, 0x100000).rbx, PVH_INFO_START);
        let mb = boot_regs(BootMode::Multiboot, 0x100000);
        assert_eq!((mb.rax, mb.rbx, mb.rip), (0x2bad_b002, PVH_INFO_START, 0x100000));
    }

    #[test]
    fn lint_routes_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lint(&mut lapic);
        assert_eq!((lapic.regs[APIC_LVT0 + 1] as u8) & 7, 7);
        assert_eq!((lapic.regs[APIC_LVT1 + 1] as u8) & 7, 4);
    }
}
