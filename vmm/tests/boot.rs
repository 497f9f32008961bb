//! Real guests under /dev/kvm: each boot protocol, the console, and how a dead guest ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::time::Duration;

use common::*;

fn boot(image_name: &str, cmdline: &str) -> std::process::Output {
    require_kvm();
    let mut cmd = vmm();
    cmd.arg("--kernel")
        .arg(image(image_name))
        .args(["--cmdline", cmdline, "--memory", "16M"]);
    run_with_limit(cmd, Duration::from_secs(10)).0
}

/// Boots `image_name` and checks it exits 0 after printing exactly `cmdline`.
fn assert_prints_cmdline(image_name: &str, cmdline: &str) {
    let out = boot(image_name, cmdline);
    assert!(
        out.status.success(),
        "status {:?}, stderr {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), format!("hello from unikernel, cmdline: {cmdline}\n"));
}

#[test]
fn pvh_hello_prints_its_exact_cmdline_and_exits_zero() {
    assert_prints_cmdline("hello", "name=web ip=10.0.0.2/24 quoted=\"a b\" end");
}

#[test]
fn linux64_hello_prints_its_exact_cmdline_and_exits_zero() {
    assert_prints_cmdline("hello-lx", "console=ttyS0 the 64-bit way");
}

#[test]
fn empty_and_long_command_lines_arrive_intact() {
    assert_eq!(text(&boot("hello", "").stdout), "hello from unikernel, cmdline: \n");
    let long = "x".repeat(3000);
    assert_eq!(
        text(&boot("hello-lx", &long).stdout),
        format!("hello from unikernel, cmdline: {long}\n")
    );
}

#[test]
fn triple_fault_exits_nonzero_with_a_clear_message_within_a_second() {
    require_kvm();
    let mut cmd = vmm();
    cmd.arg("--kernel").arg(image("triplefault"));
    let (out, _) = run_with_limit(cmd, Duration::from_secs(1));
    assert_eq!(out.status.code(), Some(1), "stderr {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "about to triple fault\n",
        "console output before the fault is kept"
    );
    let err = text(&out.stderr);
    assert!(err.contains("triple-faulted") && err.contains("rip 0x"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn console_can_go_to_a_file() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("ukvmm-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("console.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = vmm();
    cmd.arg("--kernel")
        .arg(image("hello"))
        .args(["--cmdline", "to a file", "--console"])
        .arg(&log);
    let (out, _) = run_with_limit(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from unikernel, cmdline: to a file\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_vcpus_boot_on_vcpu_zero() {
    require_kvm();
    let mut cmd = vmm();
    cmd.arg("--kernel")
        .arg(image("hello"))
        .args(["--vcpus", "2", "--cmdline", "smp"]);
    let (out, _) = run_with_limit(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from unikernel, cmdline: smp\n");
}

#[test]
fn help_explains_every_option() {
    let out = vmm().arg("--help").output().unwrap();
    let help = text(&out.stdout);
    for opt in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--memory",
        "--vcpus",
        "--console",
        "Exit status",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
    }
}

/// `hello-mb` made into another image form with objcopy (binutils, as Unikraft's build
/// uses it), in a temporary folder of this test.
fn objcopy(format: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ukvmm-mb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let st = std::process::Command::new("objcopy")
        .args(["-O", format])
        .arg(image("hello-mb"))
        .arg(&out)
        .status()
        .expect("objcopy (binutils) is installed by scripts/setup.sh");
    assert!(st.success(), "objcopy -O {format}");
    out
}

/// Boots a multiboot `kernel`: its command line starts with the kernel's name, as GRUB
/// and QEMU pass it.
fn assert_boots_multiboot(kernel: &std::path::Path, cmdline: &str) {
    require_kvm();
    let mut cmd = vmm();
    cmd.arg("--kernel").arg(kernel).args(["--cmdline", cmdline]);
    let (out, _) = run_with_limit(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("hello from unikernel, cmdline: {} {cmdline}\n", kernel.display())
    );
}

#[test]
fn multiboot_kernels_boot_as_elf64_elf32_and_flat_images() {
    // ELF64 with a multiboot header and no PVH note: multiboot, not the Linux entry.
    assert_boots_multiboot(&image("hello-mb"), "name=mb -- app args");
    // ELF32 (EM_386), the shape of Unikraft's default KVM images.
    assert_boots_multiboot(&objcopy("elf32-i386", "hello-mb32"), "from an ELF32");
    // A flat binary: only the header's a.out kludge says where to load and enter.
    assert_boots_multiboot(&objcopy("binary", "hello-mb.bin"), "from a flat image");
}

#[test]
fn bzimage_boots_through_the_64bit_entry() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("ukvmm-bz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bz = dir.join("bzImage");
    std::fs::write(&bz, make_bzimage(&std::fs::read(image("hello-bz")).unwrap())).unwrap();
    let mut cmd = vmm();
    cmd.arg("--kernel").arg(&bz).args(["--cmdline", "from a bzImage"]);
    let (out, _) = run_with_limit(cmd, Duration::from_secs(10));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from unikernel, cmdline: from a bzImage\n");
}

#[test]
fn bzimage_without_64bit_entry_is_refused() {
    let dir = std::env::temp_dir().join(format!("ukvmm-bz32-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut img = make_bzimage(&std::fs::read(image("hello-bz")).unwrap());
    img[0x236] = 0; // clear XLF_KERNEL_64
    let bz = dir.join("bzImage32");
    std::fs::write(&bz, img).unwrap();
    let out = vmm().arg("--kernel").arg(&bz).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("no 64-bit entry point"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn example_images_contain_no_sse_instructions() {
    // The nested KVM on our hosts cannot emulate SSE in guests; neither may our images use it.
    for name in [
        "hello",
        "hello-lx",
        "hello-bz",
        "hello-mb",
        "triplefault",
        "deadhalt",
        "http",
        "hostile",
    ] {
        let out = std::process::Command::new("objdump")
            .arg("-d")
            .arg(image(name))
            .output()
            .expect("objdump (binutils)");
        assert!(out.status.success());
        let asm = text(&out.stdout);
        assert!(
            asm.contains("<ukrt_") && asm.lines().count() > 100,
            "{name}: disassembly looks empty"
        );
        for bad in ["%xmm", "%ymm", "%zmm", "ldmxcsr", "fxsave", "xsave", "xgetbv"] {
            assert!(!asm.contains(bad), "{name} uses {bad}");
        }
    }
}

#[test]
fn a_guest_halted_with_interrupts_off_is_reported_not_waited_for() {
    require_kvm();
    let mut cmd = vmm();
    cmd.arg("--kernel").arg(image("deadhalt"));
    let (out, elapsed) = run_with_limit(cmd, Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(1), "stderr {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "halting with interrupts off\n");
    let err = text(&out.stderr);
    assert!(err.contains("halted with interrupts disabled"), "{err}");
    assert!(
        elapsed >= Duration::from_secs(1),
        "found dead only after watching it: {elapsed:?}"
    );
}

#[test]
fn the_cpuid_cache_is_written_once_read_after_and_a_bad_one_replaced() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("uk-cpuid-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cpuid");
    let run = || {
        let mut cmd = vmm();
        cmd.arg("--kernel")
            .arg(image("hello"))
            .args(["--cmdline", "cached"])
            .arg("--cpuid-cache")
            .arg(&cache);
        let out = run_with_limit(cmd, Duration::from_secs(10)).0;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello from unikernel, cmdline: cached\n");
    };
    run();
    let first = std::fs::read(&cache).expect("the first VMM keeps KVM's answer");
    let mtime = std::fs::metadata(&cache).unwrap().modified().unwrap();
    run();
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        mtime,
        "read, not rewritten"
    );
    // A damaged cache is not believed: KVM is asked again and the file made whole. (Not
    // byte for byte the first: KVM reports the APIC id of the CPU the ioctl ran on in leaf
    // 1, which the VMM overwrites for each vCPU anyway.)
    let damaged = &first[..first.len() / 2];
    std::fs::write(&cache, damaged).unwrap();
    run();
    let again = std::fs::read(&cache).unwrap();
    assert_eq!(again.len(), first.len(), "rewritten whole");
    assert_eq!(again[..8], first[..8]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
    std::fs::remove_dir_all(&dir).unwrap();
}
