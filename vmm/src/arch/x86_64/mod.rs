//! x86_64: guest physical layout, boot structures, and initial vCPU state.
pub mod bootinfo;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod multiboot_info;
pub mod regs;
