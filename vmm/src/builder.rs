//! Assembles a VM from a [`VmConfig`] and runs it to the end.
//!
//! Everything that can be refused (memory size, image format, segments, command line,
//! initrd) is checked and loaded into guest memory before KVM is asked for a VM.
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::size::MemSize;
use kvm_bindings::CpuId;

use crate::arch::x86_64::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE};
use crate::arch::x86_64::regs::BootMode;
use crate::arch::x86_64::{bootinfo, mptable, multiboot_info};
use crate::cmdline;
use crate::config::{ConsoleTarget, ControlSocket, RestoreConfig, VmConfig};
use crate::control::{self, Controller};
use crate::device_manager::{self, DeviceManager, Legacy, NetDevice};
use crate::devices::legacy::console_socket::{feed_socket, ConsoleSocket};
use crate::devices::legacy::serial::Serial;
use crate::devices::virtio::transport::mmio::MMIO_LEN;
use crate::devices::Bus;
use crate::event_loop::EventLoop;
use crate::exit::{ExitRequest, GuestFault, StopReason};
use crate::loader;
use crate::seccomp::{self, Filters};
use crate::snapshot::{self, memory::Origin};
use crate::vstate::memory::{self, GuestMemoryMmap};
use crate::vstate::vcpu::{self, Entry, Vcpu};
use crate::vstate::vcpu_handle::VcpuHandle;
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
    #[error("cannot open console {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the console feed (--console-feed-fd): {0}")]
    ConsoleFeed(String),
    #[error("--vcpus must be between 1 and {max}, not {given}")]
    Vcpus { given: u8, max: u8 },
    #[error(transparent)]
    Devices(#[from] device_manager::Error),
    #[error(transparent)]
    Cmdline(#[from] cmdline::Error),
    #[error(transparent)]
    Multiboot(#[from] multiboot_info::Error),
    #[error("{0}")]
    Threads(String),
    #[error("cannot listen on control socket {socket}: {source}")]
    Control {
        socket: ControlSocket,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    #[error("the snapshot has a network device: give its tap with --net-fd or --tap")]
    SnapshotNeedsNet,
    #[error("the snapshot has no network device, but a tap was given")]
    SnapshotHasNoNet,
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error(transparent)]
    Jail(#[from] crate::jail::Error),
    #[error("{0}")]
    WarmMismatch(String),
}

pub use contract::limits::MAX_VCPUS;

impl Error {
    /// The host is out of something (threads, memory, descriptors), not the VM at fault:
    /// the same VM may start a moment later.
    pub fn is_host_exhaustion(&self) -> bool {
        let errno =
            |e: &kvm_ioctls::Error| matches!(e.errno(), libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE);
        match self {
            Error::Threads(_) | Error::Memory(memory::Error::Mmap { .. }) => true,
            Error::Vm(vm::Error::OpenKvm(e)) | Error::Vm(vm::Error::Kvm { source: e, .. }) => errno(e),
            Error::Vcpu(vcpu::Error::Kvm { source, .. }) => errno(source),
            _ => false,
        }
    }
}

/// Timestamps of the boot phases, printed with `--trace-boot`.
pub struct BootTrace {
    start: Instant,
    marks: Vec<(&'static str, Instant)>,
    /// The boot vCPU's exits, once it stopped.
    pub exits: vcpu::ExitCounts,
}

impl BootTrace {
    pub fn new(start: Instant) -> Self {
        BootTrace {
            start,
            marks: Vec::with_capacity(8),
            exits: vcpu::ExitCounts::default(),
        }
    }

    /// When the VMM started: what every phase is measured from.
    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn mark(&mut self, phase: &'static str) {
        self.marks.push((phase, Instant::now()));
    }

    /// Each phase, how long it took, and when it ended (both from the process start).
    fn steps(&self) -> impl Iterator<Item = (&'static str, Duration, Duration)> + '_ {
        let mut prev = self.start;
        self.marks.iter().map(move |&(phase, t)| {
            let step = (phase, t - prev, t - self.start);
            prev = t;
            step
        })
    }

    pub fn report(&self) -> String {
        let mut out = String::new();
        for (phase, took, at) in self.steps() {
            out += &format!("{phase}: +{}us (at {}us) ", took.as_micros(), at.as_micros());
        }
        out + &self.exits.to_string()
    }

    /// The phases so far, short: "loaded 0.33 ms, vm 0.76 ms, ..., in the guest at 2.05 ms".
    pub fn phases(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut parts: Vec<String> = self
            .steps()
            .map(|(phase, took, _)| format!("{phase} {:.2} ms", ms(took)))
            .collect();
        let at = self.steps().last().map_or(Duration::ZERO, |(_, _, at)| at);
        parts.push(format!("in the guest at {:.2} ms", ms(at)));
        parts.join(", ")
    }
}

/// A VM ready to run: its memory, KVM objects, devices and vCPUs.
pub struct Machine {
    // Field order is drop order: vCPUs and the VM before the memory they map.
    vcpus: Vec<Vcpu>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    /// The devices by type (pausing and saving them comes with snapshots).
    pub legacy: Legacy,
    pub net: Option<NetDevice>,
    exit: ExitRequest,
    /// Every device's fds, run on one thread once the VM starts.
    events: EventLoop,
    control: Option<UnixListener>,
    /// The console socket, for the control request that hands it a new feed.
    console: Option<ConsoleSocket>,
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    origin: Origin,
    pub trace: BootTrace,
    /// Print the phases so far as the guest is entered (`contract::exit::STARTED_PREFIX`).
    pub announce_start: bool,
}

/// What a boot and a restore both end with.
struct Parts {
    vcpus: Vec<Vcpu>,
    devices: DeviceManager,
    exit: ExitRequest,
    events: EventLoop,
    control: Option<UnixListener>,
    console: Option<ConsoleSocket>,
    vm: Vm,
    mem: GuestMemoryMmap,
    origin: Origin,
    trace: BootTrace,
}

impl Machine {
    fn assemble(p: Parts) -> Machine {
        Machine {
            vcpus: p.vcpus,
            pio: Arc::new(p.devices.pio),
            mmio: Arc::new(p.devices.mmio),
            serial: p.devices.legacy.serial.clone(),
            legacy: p.devices.legacy,
            net: p.devices.net,
            exit: p.exit,
            events: p.events,
            control: p.control,
            console: p.console,
            vm: Arc::new(p.vm),
            mem: p.mem,
            origin: p.origin,
            trace: p.trace,
            announce_start: false,
        }
    }
}

fn bind_control(socket: Option<&ControlSocket>) -> Result<Option<UnixListener>, Error> {
    socket
        .map(|socket| {
            match socket {
                ControlSocket::Path(path) => control::bind(path),
                ControlSocket::Listening(fd) => control::inherited(*fd),
            }
            .map_err(|source| Error::Control {
                socket: socket.clone(),
                source,
            })
        })
        .transpose()
}

/// The serial port's sink, and the console socket behind it if it is one (a feed, given
/// now or later, goes there).
fn console_out(
    target: &ConsoleTarget,
    feed: Option<RawFd>,
    events: &mut EventLoop,
) -> Result<(Box<dyn Write + Send>, Option<ConsoleSocket>), Error> {
    let feed_error = |e: std::io::Error| Error::ConsoleFeed(e.to_string());
    if let (Some(_), false) = (feed, matches!(target, ConsoleTarget::Socket(_))) {
        return Err(Error::ConsoleFeed("it needs --console unix:PATH".into()));
    }
    Ok(match target {
        ConsoleTarget::Stdout => (Box::new(std::io::stdout()), None),
        ConsoleTarget::Off => (Box::new(std::io::sink()), None),
        ConsoleTarget::Socket(path) => {
            let socket = ConsoleSocket::bind(path, events).map_err(|source| Error::Console {
                path: path.clone(),
                source,
            })?;
            if let Some(fd) = feed {
                // SAFETY: named on our command line and inherited for us alone.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                socket
                    .set_feed(feed_socket(fd).map_err(feed_error)?)
                    .map_err(feed_error)?;
            }
            (Box::new(socket.clone()), Some(socket))
        }
        ConsoleTarget::File(path) => (
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::Console {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None,
        ),
    })
}

/// A VM created ahead of need (the warm pool): its memory mapped and given to KVM, the
/// irqchip and PIT, its vCPUs created and the host's CPUID read. What it runs comes
/// later ([`build_warm`]); nothing in it has seen guest input yet.
pub struct Warm {
    // Field order is drop order: vCPUs and the VM before the memory they map.
    vcpus: Vec<Vcpu>,
    vm: Vm,
    mem: GuestMemoryMmap,
    cpuid: CpuId,
    memory: MemSize,
}

impl Warm {
    /// Creates the VM of a pooled VMM: the costly KVM calls of a start, done before it.
    pub fn prepare(memory: MemSize, vcpus: u8, cpuid_cache: Option<&Path>) -> Result<Warm, Error> {
        check_vcpus(vcpus)?;
        let mem = memory::create(memory)?;
        let vm = Vm::new(&mem)?;
        let cpuid = crate::vstate::cpuid_cache::supported_cpuid(&vm, cpuid_cache)?;
        let vcpus: Vec<Vcpu> = (0..vcpus).map(|id| Vcpu::new(&vm, id)).collect::<Result<_, _>>()?;
        for vcpu in &vcpus {
            vcpu.configure_cpu(cpuid.clone(), vcpus.len() as u8)?;
        }
        Ok(Warm {
            vcpus,
            vm,
            mem,
            cpuid,
            memory,
        })
    }

    pub fn memory(&self) -> MemSize {
        self.memory
    }

    pub fn vcpus(&self) -> u8 {
        self.vcpus.len() as u8
    }
}

fn check_vcpus(vcpus: u8) -> Result<(), Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::Vcpus {
            given: vcpus,
            max: MAX_VCPUS,
        });
    }
    Ok(())
}

/// Builds the machine described by `config`. `start` is when the process started.
pub fn build(config: &VmConfig, start: Instant) -> Result<Machine, Error> {
    build_on(config, None, start)
}

/// Builds the machine described by `config` on a VM created ahead of need; `start` is
/// when the hand-off arrived. Its memory size and vCPU count must be the VM's.
pub fn build_warm(config: &VmConfig, warm: Warm, start: Instant) -> Result<Machine, Error> {
    if config.memory != warm.memory || config.vcpus != warm.vcpus() {
        return Err(Error::WarmMismatch(format!(
            "the pooled VM has {} and {} vCPUs, the configuration {} and {}",
            warm.memory,
            warm.vcpus(),
            config.memory,
            config.vcpus
        )));
    }
    build_on(config, Some(warm), start)
}

/// Writes the kernel, initrd, command line and boot tables into `mem`; returns where
/// the boot vCPU enters.
fn load_guest(config: &VmConfig, mem: &GuestMemoryMmap) -> Result<Entry, Error> {
    let kernel = loader::load_kernel(mem, &config.kernel, config.memory)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(mem, path, config.memory, kernel.end)?),
        None => None,
    };
    // Guests find virtio-mmio devices on their command line, as with Firecracker.
    let devices: Vec<cmdline::MmioDevice> = config
        .net
        .iter()
        .map(|_| cmdline::MmioDevice {
            base: VIRTIO_MMIO_BASE,
            len: MMIO_LEN,
            irq: VIRTIO_IRQ_BASE,
        })
        .collect();
    let mut cmdline = cmdline::with_devices(&config.cmdline, &devices)?;
    if kernel.mode == BootMode::Multiboot {
        // GRUB and QEMU start a multiboot command line with the kernel's file name, and
        // multiboot kernels (Unikraft's among them) expect that first word.
        cmdline = format!("{} {cmdline}", config.kernel.display()).trim_end().to_string();
    }
    let cmdline_len = bootinfo::write_cmdline(mem, &cmdline)?;
    mptable::write(mem, config.vcpus)?;
    match kernel.mode {
        BootMode::Pvh => bootinfo::write_pvh_start_info(mem, config.memory.bytes(), initrd)?,
        BootMode::Multiboot => multiboot_info::write(mem, config.memory.bytes(), initrd)?,
        BootMode::Linux64 => {
            bootinfo::write_zero_page(mem, config.memory.bytes(), cmdline_len, initrd, kernel.setup_header)?
        }
    }
    Ok(Entry {
        mode: kernel.mode,
        addr: kernel.entry,
    })
}

fn build_on(config: &VmConfig, warm: Option<Warm>, start: Instant) -> Result<Machine, Error> {
    let mut trace = BootTrace::new(start);
    check_vcpus(config.vcpus)?;
    let mut events = EventLoop::new().map_err(|e| Error::Threads(format!("cannot create the event loop: {e}")))?;
    let (console, console_socket) = console_out(&config.console, config.console_feed, &mut events)?;
    let control = bind_control(config.control.as_ref())?;

    // A cold start loads the guest before it asks KVM for anything: a bad image is
    // refused without creating a VM.
    let (vm, mem, created, cpuid) = match warm {
        Some(w) => (Some(w.vm), w.mem, w.vcpus, Some(w.cpuid)),
        None => (None, memory::create(config.memory)?, Vec::new(), None),
    };
    let entry = load_guest(config, &mem)?;
    trace.mark("loaded");
    let vm = match vm {
        Some(vm) => vm,
        None => {
            let vm = Vm::new(&mem)?;
            trace.mark("vm");
            vm
        }
    };

    let exit = ExitRequest::default();
    let mut devices = DeviceManager::new(&vm, console, &exit, config.memory.bytes(), None)?;
    if let Some(net) = &config.net {
        devices.attach_net(&vm, &mem, &mut events, device_manager::open_tap(net)?, None)?;
    }
    trace.mark("devices");

    let cpuid = match cpuid {
        Some(cpuid) => cpuid,
        None => {
            let cpuid = crate::vstate::cpuid_cache::supported_cpuid(&vm, config.cpuid_cache.as_deref())?;
            trace.mark("cpuid");
            cpuid
        }
    };
    // A pooled VM's vCPUs have everything but where to enter.
    let vcpus = match created {
        created if created.is_empty() => {
            let vcpus = (0..config.vcpus)
                .map(|id| Vcpu::new(&vm, id))
                .collect::<Result<Vec<_>, _>>()?;
            for vcpu in &vcpus {
                vcpu.configure_cpu(cpuid.clone(), config.vcpus)?;
            }
            vcpus
        }
        created => created,
    };
    if let Some(boot) = vcpus.first() {
        boot.set_entry(&mem, entry)?;
    }
    trace.mark("vcpus");

    Ok(Machine::assemble(Parts {
        vcpus,
        devices,
        exit,
        events,
        control,
        console: console_socket,
        vm,
        mem,
        origin: Origin::Anonymous,
        trace,
    }))
}

/// Builds the machine saved in a snapshot, ready to resume where it was paused.
///
/// Everything with a path is opened first (the snapshot's files, the sockets, /dev/kvm,
/// the tap); then `jail` runs; only then is the state file believed: a VMM wrote it, and a
/// guest may have taken that VMM over, so it is decoded and checked without privileges,
/// completely, before KVM is asked for anything.
pub fn restore(
    config: &RestoreConfig,
    start: Instant,
    jail: &mut dyn FnMut() -> Result<(), crate::jail::Error>,
) -> Result<Machine, Error> {
    restore_on(config, None, start, jail)
}

/// [`restore`] into a VM created ahead of need: the snapshot's memory goes into (or is
/// mapped over) the pooled VM's memory, which keeps its KVM slot; its size and vCPU count
/// must be the snapshot's.
pub fn restore_warm(
    config: &RestoreConfig,
    warm: Warm,
    start: Instant,
    jail: &mut dyn FnMut() -> Result<(), crate::jail::Error>,
) -> Result<Machine, Error> {
    restore_on(config, Some(warm), start, jail)
}

fn restore_on(
    config: &RestoreConfig,
    warm: Option<Warm>,
    start: Instant,
    jail: &mut dyn FnMut() -> Result<(), crate::jail::Error>,
) -> Result<Machine, Error> {
    let mut trace = BootTrace::new(start);
    let opened = snapshot::open(&config.dir)?;
    let mut events = EventLoop::new().map_err(|e| Error::Threads(format!("cannot create the event loop: {e}")))?;
    let (console, console_socket) = console_out(&config.console, config.console_feed, &mut events)?;
    let control = bind_control(config.control.as_ref())?;
    let kvm = match warm {
        Some(_) => None,
        None => Some(Vm::open_kvm()?),
    };
    let tap = config.net.as_ref().map(device_manager::open_tap).transpose()?;
    trace.mark("opened");
    jail()?;
    trace.mark("jail");

    let (saved, mem_file) = opened.check()?;
    match (&saved.devices.net, &tap) {
        (Some(_), None) => return Err(Error::SnapshotNeedsNet),
        (None, Some(_)) => return Err(Error::SnapshotHasNoNet),
        _ => {}
    }
    let invalid = |what: String| snapshot::Error::Invalid {
        path: config.dir.clone(),
        what,
    };
    let (vm, mem, origin, created) = match warm {
        Some(w) => {
            if w.memory.bytes() != saved.memory.bytes || usize::from(w.vcpus()) != saved.vcpus.len() {
                return Err(Error::WarmMismatch(format!(
                    "the pooled VM has {} and {} vCPUs, the snapshot {} and {}",
                    w.memory,
                    w.vcpus(),
                    MemSize::from_bytes(saved.memory.bytes),
                    saved.vcpus.len()
                )));
            }
            let origin = snapshot::memory::fill(Arc::new(mem_file), &w.mem).map_err(invalid)?;
            (Some(w.vm), w.mem, origin, w.vcpus)
        }
        None => {
            let (mem, origin) = snapshot::memory::open(Arc::new(mem_file), saved.memory.bytes).map_err(invalid)?;
            (None, mem, origin, Vec::new())
        }
    };
    trace.mark("loaded");
    let vm = match (vm, kvm) {
        (Some(vm), _) => vm,
        (None, Some(kvm)) => Vm::with_kvm(kvm, &mem)?,
        (None, None) => unreachable!("/dev/kvm is opened whenever no pooled VM is given"),
    };
    vm.restore_state(&saved.vm)?;
    trace.mark("vm");

    let exit = ExitRequest::default();
    let mut devices = DeviceManager::new(&vm, console, &exit, saved.memory.bytes, Some(&saved.devices))?;
    if let (Some(tap), Some(state)) = (tap, &saved.devices.net) {
        devices.attach_net(&vm, &mem, &mut events, tap, Some(state))?;
    }
    trace.mark("devices");

    let vcpus = match created {
        created if created.is_empty() => saved
            .vcpus
            .iter()
            .map(|state| Vcpu::new(&vm, state.id))
            .collect::<Result<Vec<_>, _>>()?,
        created => created,
    };
    for (vcpu, state) in vcpus.iter().zip(&saved.vcpus) {
        // A pooled VM's vCPUs are 0..n; a snapshot's must be the same.
        if vcpu.id() != state.id {
            return Err(invalid(format!("vCPU {} saved where vCPU {} is", state.id, vcpu.id())).into());
        }
        vcpu.restore(state)?;
    }
    trace.mark("vcpus");

    Ok(Machine::assemble(Parts {
        vcpus,
        devices,
        exit,
        events,
        control,
        console: console_socket,
        vm,
        mem,
        origin,
        trace,
    }))
}

/// How a run ended.
pub type Outcome = Result<StopReason, GuestFault>;

impl Machine {
    /// Handles that pause and resume each vCPU while the machine runs (for snapshots);
    /// take them before [`Machine::run`].
    pub fn vcpu_handles(&mut self) -> Vec<VcpuHandle> {
        self.vcpus.iter_mut().map(Vcpu::handle).collect()
    }

    /// Runs the VM until it stops; the boot vCPU runs on this thread, the event loop and
    /// the other vCPUs on their own threads (the other vCPUs end the process themselves
    /// if they see the guest stop). A thread that cannot be created (the host is out of
    /// threads) is an error before the guest runs, never a panic.
    ///
    /// With `filters`, every thread closes itself in with its seccomp filter before it
    /// touches anything the guest controls (the boot vCPU's, this thread, last: it starts
    /// the others).
    pub fn run(
        mut self,
        on_ap_exit: fn(Outcome, &Mutex<Serial>) -> !,
        filters: Option<Filters>,
    ) -> Result<(Outcome, BootTrace), Error> {
        let threads = |e: std::io::Error| Error::Threads(format!("cannot start a thread: {e}"));
        if let Some(listener) = self.control.take() {
            let controller = Controller::new(
                self.vcpu_handles(),
                self.vm.clone(),
                self.mem.clone(),
                self.origin.clone(),
                self.legacy.clone(),
                self.net.clone(),
                self.console.clone(),
            );
            control::register(&mut self.events, listener, controller)
                .map_err(|e| Error::Threads(format!("cannot serve the control socket: {e}")))?;
        }
        // Only the boot vCPU is watched: the others may legitimately wait for INIT/SIPI.
        let console = self.console.clone();
        let heartbeat = move || console.iter().for_each(|c| c.heartbeat());
        let Machine { mut events, .. } = self;
        crate::watchdog::install()
            .and_then(|()| crate::watchdog::watch_current_thread(&mut events, heartbeat))
            .unwrap_or_else(|e| crate::log_warn!("no watchdog for halted guests: {e}"));
        events
            .spawn_filtered(filters.as_ref().map(|f| f.event_loop.clone()))
            .map_err(threads)?;
        let mut boot = self.vcpus.remove(0);
        for mut vcpu in self.vcpus.drain(..) {
            let (pio, mmio, exit, serial) = (
                self.pio.clone(),
                self.mmio.clone(),
                self.exit.clone(),
                self.serial.clone(),
            );
            let filter = filters.as_ref().map(|f| f.vcpu.clone());
            std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    if let Some(filter) = filter {
                        crate::seccomp::apply_or_exit(&filter);
                    }
                    on_ap_exit(vcpu.run(&pio, &mmio, &exit), &serial)
                })
                .map_err(threads)?;
        }
        if let Some(filters) = &filters {
            crate::seccomp::apply(&filters.vcpu)?;
        }
        self.trace.mark("enter");
        if self.announce_start {
            eprintln!("{}{}", contract::exit::STARTED_PREFIX, self.trace.phases());
            if let Some(console) = &self.console {
                console.trace_first_line(self.trace.start());
            }
        }
        let outcome = boot.run(&self.pio, &self.mmio, &self.exit);
        self.trace.mark("stopped");
        self.trace.exits = boot.exits;
        let _ = self.serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
        Ok((outcome, self.trace))
    }
}
