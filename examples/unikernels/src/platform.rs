//! The ways out of a VM.
use crate::port::{outb, outw};

/// Clean shutdown: i8042 reset (what Firecracker and our VMM treat as "guest ended"), then
/// the ACPI-ish port 0x604 (QEMU's PM1a control: SLP_EN), then halt forever.
pub fn shutdown() -> ! {
    outb(0x64, 0xfe);
    outw(0x604, 0x2000);
    loop {
        // SAFETY: halting with interrupts off has no memory effects.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Load an empty IDT and raise #UD: no handler, no double-fault handler -> triple fault.
pub fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately fatal; nothing runs after this.
    unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &idtr, options(noreturn)) }
}
