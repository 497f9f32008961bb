//! Pausing a running vCPU from another thread (what snapshots stand on), on real KVM: a
//! guest that writes to a port in a loop makes no progress while paused, and goes on
//! after the resume.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::require_kvm;
use vm_memory::{Bytes, GuestAddress};
use vmm::arch::x86_64::regs::BootMode;
use vmm::config::MemSize;
use vmm::devices::{Bus, BusDevice};
use vmm::exit::{ExitRequest, StopReason};
use vmm::vstate::vcpu::{Entry, Vcpu};
use vmm::vstate::vcpu_handle::Error;
use vmm::vstate::{memory, vm::Vm};

/// Counts the guest's writes to its port.
struct Counter(Arc<AtomicU64>);

impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_running_vcpu_pauses_outside_the_guest_and_resumes() {
    require_kvm();
    vmm::watchdog::install().unwrap();
    let mem = memory::create(MemSize::from_bytes(4 << 20)).unwrap();
    const CODE: u64 = 0x10_0000;
    // mov dx, 0x500; again: out dx, al; jmp again
    mem.write_slice(&[0x66, 0xba, 0x00, 0x05, 0xee, 0xeb, 0xfd], GuestAddress(CODE))
        .unwrap();
    let vm = Vm::new(&mem).unwrap();
    let mut vcpu = Vcpu::new(&vm, 0).unwrap();
    let entry = Entry {
        mode: BootMode::Linux64,
        addr: CODE,
    };
    vcpu.configure(vm.supported_cpuid().unwrap(), 1, &mem, Some(entry))
        .unwrap();
    let handle = vcpu.handle();
    let count = Arc::new(AtomicU64::new(0));
    let mut pio = Bus::new("port");
    pio.insert(0x500, 1, Arc::new(Mutex::new(Counter(count.clone()))))
        .unwrap();
    let (pio, mmio) = (Arc::new(pio), Arc::new(Bus::new("MMIO")));
    let exit = ExitRequest::default();
    let stop = exit.clone();
    let runner = std::thread::spawn(move || vcpu.run(&pio, &mmio, &exit));

    let n = || count.load(Ordering::Relaxed);
    wait_until("the guest to run", || n() > 100);
    for _ in 0..3 {
        let t = Instant::now();
        handle.pause().unwrap();
        let paused_in = t.elapsed();
        let at_pause = n();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(n(), at_pause, "no guest instruction runs while paused");
        eprintln!("paused in {paused_in:?}");
        handle.resume().unwrap();
        wait_until("the guest to go on", || n() > at_pause + 100);
    }

    stop.request(StopReason::PowerOff);
    assert_eq!(runner.join().unwrap().unwrap(), StopReason::PowerOff);
    assert_eq!(handle.pause(), Err(Error::Gone(0)), "a vCPU that ended is gone");
}
