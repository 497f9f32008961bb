//! Assembles a VM from a [`VmConfig`] and runs it to the end.
//!
//! Everything that can be refused (memory size, image format, segments, command line,
//! initrd) is checked and loaded into guest memory before KVM is asked for a VM.
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::regs::BootMode;
use crate::arch::x86_64::{bootinfo, mptable};
use crate::config::{ConsoleTarget, VmConfig};
use crate::devices::legacy::{self, cmos::Cmos, i8042::I8042, power::PowerPort, serial::Serial};
use crate::devices::Bus;
use crate::exit::{ExitRequest, GuestFault, StopReason};
use crate::loader;
use crate::vstate::memory::{self, GuestMemoryMmap};
use crate::vstate::vcpu::{self, Entry, Vcpu};
use crate::vstate::vm::{self, Vm};

/// Anything that stops a VM from being built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    BootInfo(#[from] bootinfo::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error("cannot open console file {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("--vcpus must be between 1 and {max}, not {given}")]
    Vcpus { given: u8, max: u8 },
    #[error("device setup failed: {0}")]
    Device(String),
}

/// Most vCPUs a VM may have (APIC IDs fit in 8 bits; keep well clear of the broadcast ID).
pub const MAX_VCPUS: u8 = 64;

/// Timestamps of the boot phases, printed with `--trace-boot`.
pub struct BootTrace {
    start: Instant,
    marks: Vec<(&'static str, Instant)>,
}

impl BootTrace {
    pub fn new(start: Instant) -> Self {
        BootTrace {
            start,
            marks: Vec::with_capacity(8),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        self.marks.push((phase, Instant::now()));
    }

    pub fn report(&self) -> String {
        let mut prev = self.start;
        let mut out = String::new();
        for (phase, t) in &self.marks {
            out += &format!(
                "{phase}: +{}us (at {}us) ",
                (*t - prev).as_micros(),
                (*t - self.start).as_micros()
            );
            prev = *t;
        }
        out
    }
}

/// A VM ready to run: its memory, KVM objects, devices and vCPUs.
pub struct Machine {
    // Field order is drop order: vCPUs and the VM before the memory they map.
    vcpus: Vec<Vcpu>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    exit: ExitRequest,
    _vm: Vm,
    _mem: GuestMemoryMmap,
    pub trace: BootTrace,
}

fn console_out(target: &ConsoleTarget) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match target {
        ConsoleTarget::Stdout => Box::new(std::io::stdout()),
        ConsoleTarget::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path).map_err(
            |source| Error::Console {
                path: path.clone(),
                source,
            },
        )?),
    })
}

/// Builds the machine described by `config`. `start` is when the process started.
pub fn build(config: &VmConfig, start: Instant) -> Result<Machine, Error> {
    let mut trace = BootTrace::new(start);
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(Error::Vcpus {
            given: config.vcpus,
            max: MAX_VCPUS,
        });
    }
    let console = console_out(&config.console)?;

    let mem = memory::create(config.memory)?;
    let kernel = loader::load_kernel(&mem, &config.kernel, config.memory)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(&mem, path, config.memory, kernel.end)?),
        None => None,
    };
    let cmdline_len = bootinfo::write_cmdline(&mem, &config.cmdline)?;
    mptable::write(&mem, config.vcpus)?;
    match kernel.mode {
        BootMode::Pvh => bootinfo::write_pvh_start_info(&mem, config.memory.bytes(), initrd)?,
        BootMode::Linux64 => {
            bootinfo::write_zero_page(&mem, config.memory.bytes(), cmdline_len, initrd, kernel.setup_header)?
        }
    }
    trace.mark("loaded");

    let vm = Vm::new(&mem)?;
    trace.mark("vm");

    let exit = ExitRequest::default();
    let device_err = |e: &dyn std::fmt::Display| Error::Device(e.to_string());
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_err(&e))?;
    vm.fd()
        .register_irqfd(&serial_irq, legacy::COM1_IRQ)
        .map_err(|e| device_err(&e))?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, console)));
    let mem_bytes = config.memory.bytes();
    let below_4g = crate::arch::x86_64::layout::low_ram_end(mem_bytes);
    let mut pio = Bus::new("port");
    pio.insert(legacy::COM1_BASE, 8, serial.clone())
        .map_err(|e| device_err(&e))?;
    pio.insert(legacy::I8042_BASE, 5, Arc::new(Mutex::new(I8042::new(exit.clone()))))
        .map_err(|e| device_err(&e))?;
    pio.insert(
        legacy::CMOS_BASE,
        2,
        Arc::new(Mutex::new(Cmos::new(below_4g, mem_bytes - below_4g))),
    )
    .map_err(|e| device_err(&e))?;
    pio.insert(
        legacy::POWER_PORT,
        2,
        Arc::new(Mutex::new(PowerPort::new(exit.clone()))),
    )
    .map_err(|e| device_err(&e))?;
    let mmio = Bus::new("MMIO");
    trace.mark("devices");

    let cpuid = vm.supported_cpuid()?;
    trace.mark("cpuid");
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let vcpu = Vcpu::new(&vm, id)?;
        let entry = (id == 0).then_some(Entry {
            mode: kernel.mode,
            addr: kernel.entry,
        });
        vcpu.configure(cpuid.clone(), config.vcpus, &mem, entry)?;
        vcpus.push(vcpu);
    }
    trace.mark("vcpus");

    Ok(Machine {
        vcpus,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        serial,
        exit,
        _vm: vm,
        _mem: mem,
        trace,
    })
}

/// How a run ended.
pub type Outcome = Result<StopReason, GuestFault>;

impl Machine {
    /// Runs the VM until it stops; the boot vCPU runs on this thread. The other vCPUs run
    /// on their own threads and end the process themselves if they see the guest stop.
    pub fn run(mut self, on_ap_exit: fn(Outcome, &Mutex<Serial>) -> !) -> (Outcome, BootTrace) {
        let mut boot = self.vcpus.remove(0);
        for mut vcpu in self.vcpus.drain(..) {
            let (pio, mmio, exit, serial) = (
                self.pio.clone(),
                self.mmio.clone(),
                self.exit.clone(),
                self.serial.clone(),
            );
            std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || on_ap_exit(vcpu.run(&pio, &mmio, &exit), &serial))
                .expect("spawning a vCPU thread");
        }
        // Only the boot vCPU is watched: the others may legitimately wait for INIT/SIPI.
        crate::watchdog::install()
            .and_then(|()| crate::watchdog::start_for_current_thread())
            .unwrap_or_else(|e| crate::log_warn!("no watchdog for halted guests: {e}"));
        self.trace.mark("enter");
        let outcome = boot.run(&self.pio, &self.mmio, &self.exit);
        self.trace.mark("stopped");
        self.flush_console();
        (outcome, self.trace)
    }

    pub fn flush_console(&self) {
        let _ = self.serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}
