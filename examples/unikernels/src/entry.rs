//! The ways in. A binary picks one with `entry_pvh!`, `entry_multiboot!`, `entry_linux64!`
//! or `entry_bzimage64!`, naming its main.
//!
//! The PVH and multiboot paths start in 32-bit protected mode with paging off: they load our GDT and
//! the static identity page tables below (first GiB with 2 MiB pages, plus 3-4 GiB
//! uncached for MMIO devices), enables long mode and jumps to 64-bit code. The Linux path
//! starts in long mode already, on the VMM's page tables. Both switch to our stack.
//! The tables grant user access everywhere, for programs that drop to CPL3 (`usermode`).

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .code32
    .globl ukrt_pvh_start32
ukrt_pvh_start32:
    movl %ebx, %esi
    movl $ukrt_pvh_start64, %edi
    jmp ukrt_start32

    .globl ukrt_mb_start32
ukrt_mb_start32:
    movl %ebx, %esi
    movl %eax, %ebp
    movl $ukrt_mb_start64, %edi
    jmp ukrt_start32

    # 32-bit protected mode, paging off. ESI: boot information, EDI: the 64-bit code to
    # continue at, EBP: kept for it.
ukrt_start32:
    cli
    # Neither PVH nor multiboot gives us a stack.
    movl $ukrt_stack_top, %esp
    lgdt (ukrt_gdt_ptr)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $ukrt_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    # A far return into the 64-bit code segment, at EDI.
    pushl $0x08
    pushl %edi
    lret

    .code64
ukrt_segments64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    ret

ukrt_pvh_start64:
    movq $ukrt_stack_top, %rsp
    call ukrt_segments64
    movl %esi, %edi
    xorl %ebp, %ebp
    call ukrt_pvh_main
    ud2

ukrt_mb_start64:
    movq $ukrt_stack_top, %rsp
    call ukrt_segments64
    movl %esi, %edi
    movl %ebp, %esi
    xorl %ebp, %ebp
    call ukrt_mb_main
    ud2

    .globl ukrt_linux_start64
ukrt_linux_start64:
    cli
    movq $ukrt_stack_top, %rsp
    movq %rsi, %rdi
    xorl %ebp, %ebp
    call ukrt_linux_main
    ud2

    .section .rodata.ukrt_gdt, "a"
    .balign 16
ukrt_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
ukrt_gdt_ptr:
    .word 23
    .quad ukrt_gdt

    .section .data.pagetables, "aw"
    .balign 4096
    .globl ukrt_pml4
ukrt_pml4:
    .quad ukrt_pdpt + 0x7
    .fill 511, 8, 0
ukrt_pdpt:
    .quad ukrt_pd0 + 0x7
    .quad 0
    .quad 0
    .quad ukrt_pd3 + 0x7
    .fill 508, 8, 0
ukrt_pd0:
    .set ukrt_i, 0
    .rept 512
    .quad (ukrt_i << 21) | 0x87
    .set ukrt_i, ukrt_i + 1
    .endr
ukrt_pd3:
    .set ukrt_i, 0
    .rept 512
    .quad (0xc0000000 + (ukrt_i << 21)) | 0x9f
    .set ukrt_i, ukrt_i + 1
    .endr

    .section .bss.ukrt_stack, "aw", @nobits
    .balign 16
ukrt_stack:
    .skip 131072
ukrt_stack_top:
    .text
"#,
    options(att_syntax)
);

extern "Rust" {
    fn ukrt_main(boot: &crate::BootInfo) -> !;
}

#[no_mangle]
extern "C" fn ukrt_pvh_main(start_info: u64) -> ! {
    // SAFETY: the PVH protocol put the start_info address in EBX; we passed it through.
    let boot = unsafe { crate::boot::from_pvh(start_info) };
    // SAFETY: defined by the binary through `entry_pvh!`.
    unsafe { ukrt_main(&boot) }
}

#[no_mangle]
extern "C" fn ukrt_mb_main(info: u64, magic: u64) -> ! {
    // SAFETY: a multiboot loader put the magic in EAX and the information address in EBX;
    // we passed both through.
    let boot = unsafe { crate::boot::from_multiboot(info, magic as u32) };
    // SAFETY: defined by the binary through `entry_multiboot!`.
    unsafe { ukrt_main(&boot) }
}

#[no_mangle]
extern "C" fn ukrt_linux_main(zero_page: u64) -> ! {
    // SAFETY: the Linux boot protocol put the boot_params address in RSI.
    let boot = unsafe { crate::boot::from_linux(zero_page) };
    // SAFETY: defined by the binary through `entry_linux64!`.
    unsafe { ukrt_main(&boot) }
}

/// Enter through PVH: emits `_start` (32-bit) and the `XEN_ELFNOTE_PHYS32_ENTRY` note.
#[macro_export]
macro_rules! entry_pvh {
    ($main:path) => {
        $crate::__entry!(
            r#"
            .section .text.entry, "ax"
            .code32
            .globl _start
        _start:
            jmp ukrt_pvh_start32
            .code64

            .section .note.Xen, "a"
            .balign 4
            .long 4
            .long 4
            .long 18
            .asciz "Xen"
            .balign 4
            .long ukrt_pvh_start32
            .text
            "#,
            $main
        );
    };
}

/// Enter through multiboot (v1): the header (with the a.out kludge fields, so the image
/// also boots as a flat binary from `objcopy -O binary`) opens `.text.entry`, within the
/// first 8 KiB of the file; `_start` is entered in 32-bit protected mode with the magic in
/// EAX and the multiboot information in EBX. `objcopy -O elf32-i386` makes it the ELF32
/// that GRUB, QEMU and Unikraft's KVM target use.
#[macro_export]
macro_rules! entry_multiboot {
    ($main:path) => {
        $crate::__entry!(
            r#"
            .section .text.entry, "ax"
            .balign 4
        ukrt_mb_header:
            .long 0x1badb002
            .long 0x00010003
            .long -(0x1badb002 + 0x00010003)
            .long ukrt_mb_header
            .long __ukrt_load_start
            .long __ukrt_load_end
            .long __ukrt_bss_end
            .long _start
            .code32
            .globl _start
        _start:
            jmp ukrt_mb_start32
            .code64
            .text
            "#,
            $main
        );
    };
}

/// Enter the 64-bit Linux way: `_start` is the ELF entry, RSI holds `boot_params`.
#[macro_export]
macro_rules! entry_linux64 {
    ($main:path) => {
        $crate::__entry!(
            r#"
            .section .text.entry, "ax"
            .globl _start
        _start:
            jmp ukrt_linux_start64
            .text
            "#,
            $main
        );
    };
}

/// Enter the 64-bit Linux way, laid out as a bzImage's protected-mode kernel: the 64-bit
/// entry (`startup_64`) sits 0x200 bytes in, after a 32-bit entry we do not support.
/// The tests (`make_bzimage` in vmm/tests/common.rs) wrap the flat image with a setup header.
#[macro_export]
macro_rules! entry_bzimage64 {
    ($main:path) => {
        $crate::__entry!(
            r#"
            .section .text.entry, "ax"
            .globl ukrt_startup_32
        ukrt_startup_32:
            .fill 0x100, 2, 0x0b0f
            .globl _start
        _start:
            jmp ukrt_linux_start64
            .text
            "#,
            $main
        );
    };
}

/// The part every entry shares: its assembly, and `main` behind the symbol the runtime calls.
#[doc(hidden)]
#[macro_export]
macro_rules! __entry {
    ($asm:literal, $main:path) => {
        core::arch::global_asm!($asm, options(att_syntax));
        #[no_mangle]
        fn ukrt_main(boot: &$crate::BootInfo) -> ! {
            $main(boot)
        }
    };
}
