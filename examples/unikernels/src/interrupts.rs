//! Interrupts: an IDT whose 49 entries (CPU exceptions, the two 8259 PICs remapped to
//! vectors 32-47, the local APIC timer at 48) all go through one assembly stub into
//! [`ukrt_interrupt`]. Interrupts only wake the CPU: the main loop does the work, so
//! handlers stay a few instructions.
use core::sync::atomic::{AtomicU32, Ordering};

use crate::port::{inb, outb};
use crate::{console, platform};

const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
const PIC_EOI: u8 = 0x20;
pub const IRQ_BASE: u8 = 32;
/// The local APIC timer's vector; it reports as IRQ 0, the timer, like the PIT.
const TIMER_VECTOR: u8 = 48;
const VECTORS: usize = 49;

const LAPIC_BASE: usize = 0xfee0_0000;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_LVT0: usize = 0x350;
const LAPIC_LVT1: usize = 0x360;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_TIMER_INITIAL: usize = 0x380;
const LAPIC_TIMER_DIVIDE: usize = 0x3e0;
/// Divide configuration 0b1010: the timer counts bus cycles / 128.
const DIVIDE_BY_128: u32 = 0b1010;
pub const LAPIC_TIMER_DIVISOR: u64 = 128;
/// Low nibble all ones, as older CPUs require; shares IRQ 15's (harmless) handler.
const SPURIOUS_VECTOR: u8 = 0x2f;

fn lapic_read(reg: usize) -> u32 {
    // SAFETY: the local APIC page is identity mapped (3-4 GiB in our page tables).
    unsafe { ((LAPIC_BASE + reg) as *const u32).read_volatile() }
}

fn lapic_write(reg: usize, value: u32) {
    // SAFETY: as above.
    unsafe { ((LAPIC_BASE + reg) as *mut u32).write_volatile(value) }
}

/// A bit per IRQ line that fired since the main loop last looked.
static PENDING: AtomicU32 = AtomicU32::new(0);

core::arch::global_asm!(
    r#"
    .section .text.ukrt_isr, "ax"
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48
ukrt_isr_\n:
    .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    pushq $0
    .endif
    pushq $\n
    jmp ukrt_isr_common
    .endr

ukrt_isr_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq 72(%rsp), %rdi
    movq 80(%rsp), %rsi
    leaq 88(%rsp), %rdx
    cld
    call ukrt_interrupt
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp
    iretq

    .section .rodata.ukrt_isr_table, "a"
    .balign 8
    .globl ukrt_isr_table
ukrt_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48
    .quad ukrt_isr_\n
    .endr
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static ukrt_isr_table: [u64; VECTORS];
}

/// What the CPU pushed: where it was interrupted.
#[repr(C)]
pub struct Frame {
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const GENERAL_PROTECTION: u64 = 13;
const HLT: u8 = 0xf4;

/// `hlt` at CPL3 traps here (#GP): halt on the program's behalf, unless an interrupt is
/// already pending. Interrupts are off in this handler, so the check and `sti; hlt` cannot
/// miss one.
fn halt_for_user(frame: &mut Frame) -> bool {
    // SAFETY: rip points at mapped code; we only read one byte.
    if frame.cs & 3 != 3 || unsafe { (frame.rip as *const u8).read() } != HLT {
        return false;
    }
    if PENDING.load(Ordering::Relaxed) == 0 {
        // SAFETY: the IDT is loaded; interrupts taken here nest on this stack.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    frame.rip += 1;
    true
}

#[no_mangle]
extern "C" fn ukrt_interrupt(vector: u64, error: u64, frame: &mut Frame) {
    if vector == GENERAL_PROTECTION && halt_for_user(frame) {
        return;
    }
    if vector < u64::from(IRQ_BASE) {
        console::write_str("unikernel: CPU exception ");
        console::write_u64(vector);
        console::write_str(" error ");
        console::write_u64(error);
        console::write_str(" at rip ");
        console::write_u64(frame.rip);
        console::write_str("\n");
        platform::triple_fault();
    }
    if vector == u64::from(TIMER_VECTOR) {
        PENDING.fetch_or(1, Ordering::Relaxed);
        lapic_write(LAPIC_EOI, 0);
        return;
    }
    let irq = (vector - u64::from(IRQ_BASE)) as u32;
    PENDING.fetch_or(1 << irq, Ordering::Relaxed);
    if irq >= 8 {
        outb(PIC2_CMD, PIC_EOI);
    }
    outb(PIC1_CMD, PIC_EOI);
}

#[repr(C, align(16))]
struct Idt([u64; VECTORS * 2]);

static mut IDT: Idt = Idt([0; VECTORS * 2]);

/// Loads the IDT (interrupt gates, ring 0, selector 0x08) and remaps the PICs to 32-47
/// with every line masked. Interrupts stay disabled until [`wait`].
pub fn init() {
    // SAFETY: called once at boot, before interrupts are enabled; nothing else touches IDT.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, handler) in ukrt_isr_table.iter().enumerate() {
            let h = *handler;
            idt.0[v * 2] = (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
            idt.0[v * 2 + 1] = h >> 32;
        }
        #[repr(C, packed)]
        struct Idtr {
            limit: u16,
            base: u64,
        }
        let idtr = Idtr {
            limit: (VECTORS * 16 - 1) as u16,
            base: idt.0.as_ptr() as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(nostack));
    }
    // Virtual wire mode, as firmware leaves it: the PIC's output reaches the CPU through
    // local APIC LINT0 (ExtINT), NMIs through LINT1. Not every VMM sets this up for us.
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | u32::from(SPURIOUS_VECTOR));
    lapic_write(LAPIC_LVT0, 0x700);
    lapic_write(LAPIC_LVT1, 0x400);
    // One-shot mode, unmasked; an initial count of 0 keeps it stopped until armed.
    lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_128);
    lapic_write(LAPIC_LVT_TIMER, u32::from(TIMER_VECTOR));
    // ICW1..4: edge triggered, cascade, vectors 32 and 40, 8086 mode.
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, IRQ_BASE);
    outb(PIC2_DATA, IRQ_BASE + 8);
    outb(PIC1_DATA, 4);
    outb(PIC2_DATA, 2);
    outb(PIC1_DATA, 1);
    outb(PIC2_DATA, 1);
    outb(PIC1_DATA, 0xff);
    outb(PIC2_DATA, 0xff);
}

/// Starts the local APIC timer: IRQ 0 after `count` periods of (bus clock / 128).
pub fn arm_lapic_timer(count: u32) {
    lapic_write(LAPIC_TIMER_INITIAL, count);
}

/// Unmasks IRQ line `irq` (0-15).
pub fn unmask(irq: u8) {
    if irq < 8 {
        outb(PIC1_DATA, inb(PIC1_DATA) & !(1 << irq));
    } else {
        outb(PIC1_DATA, inb(PIC1_DATA) & !(1 << 2)); // the cascade
        outb(PIC2_DATA, inb(PIC2_DATA) & !(1 << (irq - 8)));
    }
}

/// Returns and clears the IRQs that fired.
pub fn take_pending() -> u32 {
    PENDING.swap(0, Ordering::Relaxed)
}

/// Sleeps until an interrupt arrives, unless one already did: `sti; hlt` opens the
/// interrupt window only once the CPU is halting, so none is lost in between.
pub fn wait() {
    if crate::usermode::in_user_mode() {
        // Interrupts are always on at CPL3; `hlt` traps to `halt_for_user`.
        if PENDING.load(Ordering::Relaxed) == 0 {
            // SAFETY: traps with #GP, handled above.
            unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
        }
        return;
    }
    // SAFETY: enabling interrupts with the IDT loaded; they are disabled again on return.
    unsafe {
        core::arch::asm!("cli", options(nomem, nostack));
        if PENDING.load(Ordering::Relaxed) == 0 {
            core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack));
        }
    }
}
