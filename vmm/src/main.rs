//! `unikernel-vmm`: boot one unikernel in one KVM VM, until it stops.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use vmm::builder::{self, Outcome};
use vmm::config::{ConsoleTarget, MemSize, NetBackend, NetConfig, VmConfig};
use vmm::devices::legacy::serial::Serial;
use vmm::devices::virtio::net::MacAddr;

/// Exit statuses, for scripts and the engine.
const EXIT_GUEST_FAULT: u8 = 1;
const EXIT_SETUP_FAILED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "unikernel-vmm",
    version,
    about = "Boot one unikernel in one KVM VM and run it until it stops.",
    after_help = "With --tap or --net-fd the guest gets a virtio-net device (virtio-mmio, announced on its \
command line as virtio_mmio.device=4K@0xd0000000:5).\n\n\
Kernel formats: ELF64 with a PVH note (32-bit PVH entry), ELF64 without one \
(64-bit Linux boot protocol, as Firecracker boots a vmlinux), and bzImage.\n\n\
Exit status: 0 the guest shut down or reset (i8042 0xFE, port 0x604); 1 the guest died \
(triple fault, KVM internal error); 2 bad command line; 3 refused before start (bad image, \
memory size, no /dev/kvm)."
)]
struct Cli {
    /// Kernel image to boot: PVH ELF, ELF64 vmlinux-style, or bzImage
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

    /// Initial ramdisk, placed at the top of low memory and announced to the kernel
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line, passed verbatim
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,

    /// Guest memory: bytes, or with a suffix K, M, G (e.g. 16M); must fit in host RAM
    #[arg(long, value_name = "SIZE", default_value = "16M")]
    memory: MemSize,

    /// Number of vCPUs; vCPU 0 boots, the others wait for the guest to start them
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u8,

    /// Where the serial console (COM1) goes: `stdout`, `off`, a file path (appended to), or
    /// `unix:PATH`, a socket the VMM listens on: a client first gets "<n>\n" and the last n
    /// bytes of output (at most 64 KiB), then the live output; a new client replaces the old
    #[arg(long, value_name = "stdout|off|PATH|unix:PATH", default_value = "stdout")]
    console: ConsoleTarget,

    /// Give the guest a virtio-net NIC on this already-open tap fd (inherited; IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)
    #[arg(long, value_name = "N", conflicts_with = "tap", requires = "mac")]
    net_fd: Option<i32>,

    /// Give the guest a virtio-net NIC on the tap of this name, opening or creating it (needs CAP_NET_ADMIN)
    #[arg(long, value_name = "NAME", requires = "mac")]
    tap: Option<String>,

    /// The NIC's MAC address, like 52:54:00:12:34:56
    #[arg(long, value_name = "MAC")]
    mac: Option<MacAddr>,

    /// Print the time spent in each boot phase to stderr when the VM stops
    #[arg(long, hide = true)]
    trace_boot: bool,
}

fn report(outcome: &Outcome) -> ExitCode {
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(fault) => {
            eprintln!("unikernel-vmm: error: {fault}");
            ExitCode::from(EXIT_GUEST_FAULT)
        }
    }
}

/// A secondary vCPU saw the guest stop: finish the whole process from its thread.
fn ap_exit(outcome: Outcome, serial: &Mutex<Serial>) -> ! {
    let _ = serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
    let code = match outcome {
        Ok(_) => 0,
        Err(fault) => {
            eprintln!("unikernel-vmm: error: {fault}");
            i32::from(EXIT_GUEST_FAULT)
        }
    };
    std::process::exit(code)
}

fn net_config(fd: Option<i32>, tap: Option<String>, mac: Option<MacAddr>) -> Option<NetConfig> {
    let backend = match (fd, tap) {
        (Some(fd), _) => NetBackend::Fd(fd),
        (None, Some(name)) => NetBackend::Tap(name),
        (None, None) => return None,
    };
    Some(NetConfig { backend, mac: mac? })
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let config = VmConfig {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        memory: cli.memory,
        vcpus: cli.vcpus,
        console: cli.console,
        net: net_config(cli.net_fd, cli.tap, cli.mac),
    };
    let machine = match builder::build(&config, start) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("unikernel-vmm: error: {e}");
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };
    let (outcome, trace) = match machine.run(ap_exit) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unikernel-vmm: error: {e}");
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };
    if cli.trace_boot {
        eprintln!(
            "unikernel-vmm: boot trace: {} stop: {}us",
            trace.report(),
            start.elapsed().as_micros()
        );
    }
    report(&outcome)
}
