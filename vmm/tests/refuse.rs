//! Images and settings that cannot boot are refused before any VM exists, with exit
//! status 3 and one line that says what is wrong.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ukvmm-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the VMM and returns its single stderr line, asserting refusal.
fn refused(kernel: &Path, extra: &[&str]) -> String {
    let mut cmd = vmm();
    cmd.arg("--kernel").arg(kernel).args(extra);
    let (out, _) = run_with_limit(cmd, Duration::from_secs(5));
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected refusal, got {:?}: {err}",
        out.status
    );
    assert!(out.stdout.is_empty(), "no guest output expected");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Offsets of the PT_LOAD program headers of an ELF64 image.
fn load_phdrs(elf: &[u8]) -> Vec<usize> {
    let phoff = u64_at(elf, 32) as usize;
    let phnum = u16::from_le_bytes([elf[56], elf[57]]) as usize;
    (0..phnum).map(|i| phoff + i * 56).filter(|&o| elf[o] == 1).collect()
}

#[test]
fn random_bytes_are_not_a_kernel() {
    let dir = TempDir::new("random");
    let path = dir.0.join("random.img");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let err = refused(&path, &[]);
    assert!(err.contains("is not a kernel image"), "{err}");
}

#[test]
fn truncated_elf_is_refused() {
    let dir = TempDir::new("trunc");
    let hello = std::fs::read(image("hello")).unwrap();
    for (len, expect) in [
        (40, "shorter than an ELF64 header"),
        (100, "program headers end past"),
        (4200, "segment"),
    ] {
        let path = dir.0.join(format!("trunc-{len}"));
        std::fs::write(&path, &hello[..len]).unwrap();
        let err = refused(&path, &[]);
        assert!(err.contains("truncated ELF") && err.contains(expect), "{len}: {err}");
    }
}

#[test]
fn segment_outside_guest_memory_is_refused() {
    let dir = TempDir::new("outside");
    let mut elf = std::fs::read(image("hello")).unwrap();
    let ph = load_phdrs(&elf)[0];
    elf[ph + 24..ph + 32].copy_from_slice(&0xd000_0000u64.to_le_bytes()); // p_paddr in the MMIO gap
    let path = dir.0.join("outside");
    std::fs::write(&path, &elf).unwrap();
    let err = refused(&path, &[]);
    assert!(err.contains("lies outside guest memory"), "{err}");
}

#[test]
fn memory_too_small_for_the_image_says_how_much_is_needed() {
    let dir = TempDir::new("small");
    let mut elf = std::fs::read(image("hello")).unwrap();
    let ph = *load_phdrs(&elf).last().unwrap();
    elf[ph + 40..ph + 48].copy_from_slice(&(40u64 << 20).to_le_bytes()); // p_memsz: a 40 MiB bss
    let path = dir.0.join("big-bss");
    std::fs::write(&path, &elf).unwrap();
    let err = refused(&path, &["--memory", "16M"]);
    assert!(
        err.contains("needs at least 42M") && err.contains("raise --memory"),
        "{err}"
    );
}

#[test]
fn absurd_and_tiny_memory_sizes_are_refused() {
    let hello = image("hello");
    let err = refused(&hello, &["--memory", "64T"]);
    assert!(err.contains("more than this host's"), "{err}");
    let err = refused(&hello, &["--memory", "1M"]);
    assert!(err.contains("too small"), "{err}");
    let err = refused(&hello, &["--vcpus", "0"]);
    assert!(err.contains("--vcpus"), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let err = refused(Path::new("/nonexistent/kernel"), &[]);
    assert!(err.contains("/nonexistent/kernel"), "{err}");
}

#[test]
fn bad_sizes_are_usage_errors() {
    let out = vmm().args(["--kernel", "x", "--memory", "16Q"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("sizes look like 16M"),
        "{}",
        text(&out.stderr)
    );
}

/// A flat multiboot image: a header with the a.out kludge fields, then `code`.
fn multiboot_image(flags: u32, aout: [u32; 5], code: &[u8]) -> Vec<u8> {
    let magic = 0x1bad_b002u32;
    let mut v = Vec::new();
    for w in [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)]
        .iter()
        .chain(&aout)
    {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(code);
    v
}

#[test]
fn multiboot_images_that_cannot_boot_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("ukvmm-mbref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let hlt = [0xf4u8; 16];
    let outside = write(
        "entry-outside",
        &multiboot_image(0x1_0003, [0x100000, 0x100000, 0, 0, 0x300000], &hlt),
    );
    let err = refused(&outside, &[]);
    assert!(err.contains("entry_addr 0x300000 is not inside"), "{err}");
    let low = write(
        "below-1m",
        &multiboot_image(0x1_0003, [0x8000, 0x8000, 0, 0, 0x8020], &hlt),
    );
    let err = refused(&low, &[]);
    assert!(err.contains("below 1 MiB"), "{err}");
    let needs = write(
        "needs-more",
        &multiboot_image(0x1_0003 | 1 << 4, [0x100000, 0x100000, 0, 0, 0x100020], &hlt),
    );
    let err = refused(&needs, &[]);
    assert!(err.contains("requires features 0x10"), "{err}");
    let big = write(
        "bss-too-big",
        &multiboot_image(0x1_0003, [0x100000, 0x100000, 0, 0x4000000, 0x100020], &hlt),
    );
    let err = refused(&big, &["--memory", "16M"]);
    assert!(err.contains("raise --memory"), "{err}");
    let no_elf = write("no-aout-no-elf", &multiboot_image(0x3, [0; 5], &hlt));
    let err = refused(&no_elf, &[]);
    assert!(err.contains("neither an ELF nor has an a.out kludge"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fifo_or_a_directory_is_refused_at_once_not_waited_on() {
    let dir = TempDir::new("fifo");
    let fifo = dir.0.join("image.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; mkfifo creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = std::time::Instant::now();
    let err = refused(&fifo, &[]);
    assert!(err.contains("not a regular file"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let err = refused(&dir.0, &[]);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_control_fd_that_is_not_a_listening_socket_is_refused() {
    // fd 0 is /dev/null here (run_with_limit), a file, not a socket that listens.
    let err = refused(&image("hello"), &["--control-fd", "0"]);
    assert!(
        err.contains("control socket fd 0") && err.contains("not a listening unix stream socket"),
        "{err}"
    );
}
