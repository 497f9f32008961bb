//! A vCPU: its boot state, and the loop that runs it and routes its exits.
use kvm_bindings::{
    CpuId, KVM_MP_STATE_HALTED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::memory::GuestMemoryMmap;
use super::vcpu_handle::{self, Control, VcpuHandle};
use super::vcpu_state::{self, VcpuState};
use super::vm::Vm;
use crate::arch::x86_64::{cpuid, msr, regs};
use crate::devices::Bus;
use crate::exit::{internal_error_meaning, ExitRequest, GuestFault, StopReason};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vCPU {id}: {what} failed: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {source}")]
    Regs { id: u8, source: regs::Error },
    #[error(transparent)]
    State(#[from] vcpu_state::Error),
}

/// VM exits of one vCPU by kind, for `--trace-boot` and the boot benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    pub pio_out: u64,
    pub pio_in: u64,
    pub mmio_write: u64,
    pub mmio_read: u64,
    /// Every return of KVM_RUN, these four kinds included.
    pub total: u64,
}

impl ExitCounts {
    /// Everything but port and MMIO accesses (signals, halts, events).
    pub fn other(&self) -> u64 {
        self.total - self.pio_out - self.pio_in - self.mmio_write - self.mmio_read
    }
}

impl std::fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exits: {} (pio out {}, pio in {}, mmio write {}, mmio read {}, other {})",
            self.total,
            self.pio_out,
            self.pio_in,
            self.mmio_write,
            self.mmio_read,
            self.other()
        )
    }
}

pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    /// Exits seen by [`Vcpu::run`] so far.
    pub exits: ExitCounts,
    /// Pause/resume requests, once a handle was taken ([`Vcpu::handle`]).
    control: Option<Control>,
}

/// Where and how the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub mode: regs::BootMode,
    pub addr: u64,
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Vcpu, Error> {
        let fd = vm.fd().create_vcpu(u64::from(id)).map_err(|source| Error::Kvm {
            id,
            what: "KVM_CREATE_VCPU",
            source,
        })?;
        Ok(Vcpu {
            fd,
            id,
            exits: ExitCounts::default(),
            control: None,
        })
    }

    /// The handle that pauses and resumes this vCPU while it runs (one per vCPU).
    pub fn handle(&mut self) -> VcpuHandle {
        let (handle, control) = vcpu_handle::pair(self.id);
        self.control = Some(control);
        handle
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let id = self.id;
        move |source| Error::Kvm { id, what, source }
    }

    /// CPUID, MSRs, FPU, LAPIC for every vCPU; registers and segments for the boot vCPU
    /// (the others wait in the kernel for INIT/SIPI from the guest).
    pub fn configure(&self, cpuid: CpuId, count: u8, mem: &GuestMemoryMmap, entry: Option<Entry>) -> Result<(), Error> {
        self.configure_cpu(cpuid, count)?;
        match entry {
            Some(entry) => self.set_entry(mem, entry),
            None => Ok(()),
        }
    }

    /// What every vCPU of `count` gets whatever it will run: CPUID, MSRs, FPU, LAPIC (a
    /// pooled VM's vCPUs get it before the hand-off).
    pub fn configure_cpu(&self, mut cpuid: CpuId, count: u8) -> Result<(), Error> {
        let tsc_khz = self.fd.get_tsc_khz().ok().filter(|&k| k > 0);
        cpuid::filter(&mut cpuid, self.id, count, tsc_khz);
        self.fd.set_cpuid2(&cpuid).map_err(self.kvm_err("KVM_SET_CPUID2"))?;
        self.fd
            .set_msrs(&msr::boot_msrs())
            .map_err(self.kvm_err("KVM_SET_MSRS"))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.kvm_err("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(self.kvm_err("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(self.kvm_err("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// The boot vCPU's registers and segments for entering the kernel at `entry` (the
    /// GDT and page tables go into `mem`).
    pub fn set_entry(&self, mem: &GuestMemoryMmap, entry: Entry) -> Result<(), Error> {
        let mut sregs = self.fd.get_sregs().map_err(self.kvm_err("KVM_GET_SREGS"))?;
        regs::setup_sregs(mem, entry.mode, &mut sregs).map_err(|source| Error::Regs { id: self.id, source })?;
        self.fd.set_sregs(&sregs).map_err(self.kvm_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry.mode, entry.addr))
            .map_err(self.kvm_err("KVM_SET_REGS"))?;
        Ok(())
    }

    /// Gives a new vCPU the state saved in a snapshot, instead of [`Vcpu::configure`].
    pub fn restore(&self, state: &VcpuState) -> Result<(), Error> {
        Ok(state.restore(&self.fd)?)
    }

    /// Halted with RFLAGS.IF clear: only an NMI or INIT could wake it.
    fn halted_with_interrupts_off(&self) -> bool {
        const RFLAGS_IF: u64 = 1 << 9;
        let halted = self.fd.get_mp_state().is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED);
        halted && self.fd.get_regs().is_ok_and(|r| r.rflags & RFLAGS_IF == 0)
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Runs until the guest stops cleanly (`Ok`) or dies (`Err`). Port and MMIO exits go
    /// to the buses; a device may request the stop, which is checked after each write.
    pub fn run(&mut self, pio: &Bus, mmio: &Bus, exit: &ExitRequest) -> Result<StopReason, GuestFault> {
        enum Next {
            Continue,
            Stop(StopReason),
            TripleFault,
            Internal,
            FailEntry(u64),
            Crash,
            Unexpected(String),
            Kicked,
        }
        // Consecutive watchdog kicks that found the vCPU halted with interrupts off.
        let mut dead_kicks = 0u32;
        if let Some(c) = &self.control {
            c.register_thread();
        }
        loop {
            let run = self.fd.run();
            self.exits.total += 1;
            let next = match run {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.exits.pio_out += 1;
                    pio.write(u64::from(port), data);
                    exit.get().map_or(Next::Continue, Next::Stop)
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.exits.pio_in += 1;
                    pio.read(u64::from(port), data);
                    Next::Continue
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.exits.mmio_write += 1;
                    mmio.write(addr, data);
                    exit.get().map_or(Next::Continue, Next::Stop)
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.exits.mmio_read += 1;
                    mmio.read(addr, data);
                    Next::Continue
                }
                Ok(VcpuExit::Intr) => exit.get().map_or(Next::Kicked, Next::Stop),
                // Only seen without an in-kernel LAPIC: the guest has halted for good.
                Ok(VcpuExit::Hlt) => Next::Stop(StopReason::PowerOff),
                Ok(VcpuExit::Shutdown) => Next::TripleFault,
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(StopReason::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Next::Stop(StopReason::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Next::Crash,
                    other => Next::Unexpected(format!("system event {other}")),
                },
                Ok(VcpuExit::InternalError) => Next::Internal,
                Ok(VcpuExit::FailEntry(reason, _cpu)) => Next::FailEntry(reason),
                Ok(other) => Next::Unexpected(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    exit.get().map_or(Next::Kicked, Next::Stop)
                }
                Err(e) => Next::Unexpected(format!("KVM_RUN failed: {e}")),
            };
            // A kick may carry a pause or resume rather than the watchdog's look.
            if let (Next::Kicked, Some(c)) = (&next, &self.control) {
                let (fd, id) = (&self.fd, self.id);
                let save = |msrs: &[u32]| VcpuState::save(fd, id, msrs).map_err(|e| e.to_string());
                if c.serve(&save) {
                    continue;
                }
            }
            match next {
                Next::Continue => {}
                Next::Kicked if self.halted_with_interrupts_off() => {
                    // Twice in a row, a period apart: not a guest caught mid-way.
                    dead_kicks += 1;
                    if dead_kicks >= 2 {
                        return Err(GuestFault::HaltedForever { rip: self.rip() });
                    }
                }
                Next::Kicked => dead_kicks = 0,
                Next::Stop(reason) => return Ok(reason),
                Next::TripleFault => return Err(GuestFault::TripleFault { rip: self.rip() }),
                Next::Internal => return Err(self.internal_error()),
                Next::FailEntry(reason) => {
                    return Err(GuestFault::FailEntry {
                        reason,
                        rip: self.rip(),
                    })
                }
                Next::Crash => return Err(GuestFault::Crash),
                Next::Unexpected(what) => return Err(GuestFault::Unexpected(what)),
            }
        }
    }

    fn internal_error(&mut self) -> GuestFault {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live member.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data = if n == 0 {
            String::new()
        } else {
            let words: Vec<String> = internal.data[..n].iter().map(|w| format!("{w:#x}")).collect();
            format!(", data [{}]", words.join(" "))
        };
        GuestFault::InternalError {
            rip: self.rip(),
            suberror: internal.suberror,
            meaning: internal_error_meaning(internal.suberror),
            data,
        }
    }
}
