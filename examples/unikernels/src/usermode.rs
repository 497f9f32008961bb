//! Running at CPL3. On the nested KVM of our development hosts every CPL0 instruction is
//! emulated (~1 us each) while CPL3 code runs natively, so a program that does real work
//! (a TCP/IP stack) drops to CPL3 once set up. What it keeps: identity-mapped memory (the
//! page tables grant user access), port I/O (the TSS I/O bitmap allows every port), and
//! `hlt` (which traps with #GP; [`crate::interrupts`] halts on its behalf). Interrupts
//! and exceptions run at CPL0 on their own stack (TSS.rsp0).
use core::ptr::addr_of_mut;

const KERNEL_CODE: u16 = 0x08;
const KERNEL_DATA: u16 = 0x10;
const USER_DATA: u16 = 0x18 | 3;
const USER_CODE: u16 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;
const IOPB_BYTES: usize = 65536 / 8;

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
    /// All zeros: every port allowed. The byte after it must be all ones.
    iopb: [u8; IOPB_BYTES],
    iopb_end: u8,
}

#[repr(C, align(16))]
struct Stack([u8; 16384]);

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: 104,
    iopb: [0; IOPB_BYTES],
    iopb_end: 0xff,
};
static mut INTERRUPT_STACK: Stack = Stack([0; 16384]);
static mut GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff, // kernel code, 64-bit
    0x00cf_9200_0000_ffff, // kernel data
    0x00cf_f200_0000_ffff, // user data, DPL 3
    0x00af_fa00_0000_ffff, // user code, 64-bit, DPL 3
    0,                     // TSS, low half (filled in at run time)
    0,                     // TSS, high half
];

extern "C" {
    static ukrt_pml4: u8;
}

/// Whether the CPU runs at CPL3 now.
pub fn in_user_mode() -> bool {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3 == 3
}

/// Loads our GDT, TSS and page tables, then continues the caller at CPL3 on the same
/// stack with interrupts enabled. Call once, at CPL0, after `interrupts::init`.
pub fn drop_to_user() {
    // SAFETY: single-threaded boot code; the statics are set up before they are used.
    unsafe {
        let tss = addr_of_mut!(TSS);
        let stack_top = addr_of_mut!(INTERRUPT_STACK) as u64 + core::mem::size_of::<Stack>() as u64;
        core::ptr::addr_of_mut!((*tss).rsp[0]).write_unaligned(stack_top);
        let base = tss as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let gdt = &mut *addr_of_mut!(GDT);
        gdt[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        gdt[6] = base >> 32;
        #[repr(C, packed)]
        struct Gdtr {
            limit: u16,
            base: u64,
        }
        let gdtr = Gdtr {
            limit: (core::mem::size_of::<[u64; 7]>() - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        core::arch::asm!(
            "lgdt [{gdtr}]",
            "mov cr3, {pml4}",
            "push {kcode}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {kdata:x}",
            "mov ds, {kdata:x}",
            "mov es, {kdata:x}",
            "ltr {tss:x}",
            gdtr = in(reg) &gdtr,
            pml4 = in(reg) core::ptr::addr_of!(ukrt_pml4) as u64,
            kcode = const KERNEL_CODE as u64,
            kdata = in(reg) u64::from(KERNEL_DATA),
            tss = in(reg) u64::from(TSS_SELECTOR),
            tmp = out(reg) _,
        );
        core::arch::asm!(
            "mov {tmp}, rsp",
            "push {udata}",
            "push {tmp}",
            "pushfq",
            "or qword ptr [rsp], 0x200",
            "push {ucode}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "iretq",
            "2:",
            udata = const USER_DATA as u64,
            ucode = const USER_CODE as u64,
            tmp = out(reg) _,
        );
    }
}
