//! Time: the TSC, and a one-shot wake-up timer. The TSC frequency comes from CPUID leaf
//! 0x40000010 when the hypervisor offers it, else from 10 ms of PIT calibration. The same
//! leaf gives the local APIC's bus frequency; with it the wake-up timer is the local APIC
//! timer, which can sleep for minutes in one go, else the PIT, which cannot sleep past
//! 55 ms: an idle guest with a TCP timer seconds away would wake 18 times a second.
use core::sync::atomic::{AtomicU64, Ordering};

use crate::port::{inb, outb};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// 0: unknown, use the PIT.
static APIC_BUS_KHZ: AtomicU64 = AtomicU64::new(0);
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
    let (khz, bus_khz) = if max_hv_leaf >= 0x4000_0010 {
        let (eax, ebx, ..) = cpuid(0x4000_0010);
        (u64::from(eax), u64::from(ebx))
    } else {
        (0, 0)
    };
    APIC_BUS_KHZ.store(bus_khz, Ordering::Relaxed);
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

/// Raises IRQ 0 once, after `us` microseconds (or sooner: a sleep the timer cannot hold
/// ends early, and the caller looks again).
pub fn arm_oneshot(us: u64) {
    let bus_khz = APIC_BUS_KHZ.load(Ordering::Relaxed);
    if bus_khz > 0 {
        let count = u128::from(us) * u128::from(bus_khz) / 1000 / u128::from(crate::interrupts::LAPIC_TIMER_DIVISOR);
        crate::interrupts::arm_lapic_timer(count.clamp(1, u128::from(u32::MAX)) as u32);
        return;
    }
    let ticks = (us * PIT_HZ / 1_000_000).clamp(1, 0xffff);
    outb(0x43, 0x30); // channel 0, lo/hi, mode 0 (interrupt on terminal count)
    outb(0x40, ticks as u8);
    outb(0x40, (ticks >> 8) as u8);
}
