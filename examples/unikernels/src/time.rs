//! Time: the TSC, and the PIT as a one-shot wake-up timer. The TSC frequency comes from
//! CPUID leaf 0x40000010 when the hypervisor offers it, else from KVM's pvclock (one MSR
//! write, no waiting), else from 1 ms of PIT calibration.
use core::sync::atomic::{AtomicU64, Ordering};

use crate::port::{inb, outb};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
const PIT_HZ: u64 = 1_193_182;

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Finds the TSC frequency; call once at boot.
pub fn init() {
    let (max_hv_leaf, ..) = cpuid(0x4000_0000);
    let khz = if max_hv_leaf >= 0x4000_0010 {
        u64::from(cpuid(0x4000_0010).0)
    } else {
        0
    };
    TSC_KHZ.store(if khz > 0 { khz } else { calibrate_khz() }, Ordering::Relaxed);
}

/// Counts TSC ticks over 10 ms of PIT channel 2 (gated through port 0x61).
fn calibrate_khz() -> u64 {
    let ticks = PIT_HZ / 100;
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0); // channel 2, lo/hi, mode 0
    outb(0x42, ticks as u8);
    outb(0x42, (ticks >> 8) as u8);
    let start = rdtsc();
    while inb(0x61) & 0x20 == 0 {}
    rdtsc() - start
}

/// Microseconds since the TSC started.
pub fn now_us() -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    (u128::from(rdtsc()) * 1000 / u128::from(khz)) as u64
}

/// Arms PIT channel 0 to raise IRQ 0 once, after `us` microseconds (at most ~54 ms).
pub fn arm_oneshot(us: u64) {
    let ticks = (us * PIT_HZ / 1_000_000).clamp(1, 0xffff);
    outb(0x43, 0x30); // channel 0, lo/hi, mode 0 (interrupt on terminal count)
    outb(0x40, ticks as u8);
    outb(0x40, (ticks >> 8) as u8);
}
