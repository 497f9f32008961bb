//! `unikernel-vmm`: boot one unikernel in one KVM VM, until it stops.
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use contract::args::VmmArgs;
use contract::exit::{error_line, ExitStatus};
use vmm::builder::{self, Outcome};
use vmm::config::{NetBackend, NetConfig, RestoreConfig, VmConfig};
use vmm::devices::legacy::serial::Serial;

fn report(outcome: &Outcome) -> ExitCode {
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(fault) => {
            eprintln!("{}", error_line(fault));
            ExitCode::from(ExitStatus::GuestDied.code())
        }
    }
}

/// A secondary vCPU saw the guest stop: finish the whole process from its thread.
fn ap_exit(outcome: Outcome, serial: &Mutex<Serial>) -> ! {
    let _ = serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
    let code = match outcome {
        Ok(_) => 0,
        Err(fault) => {
            eprintln!("{}", error_line(&fault));
            i32::from(ExitStatus::GuestDied.code())
        }
    };
    std::process::exit(code)
}

fn net_config(fd: Option<i32>, tap: Option<String>, mac: Option<contract::mac::MacAddr>) -> Option<NetConfig> {
    let backend = match (fd, tap) {
        (Some(fd), _) => NetBackend::Fd(fd),
        (None, Some(name)) => NetBackend::Tap(name),
        (None, None) => return None,
    };
    Some(NetConfig { backend, mac })
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = VmmArgs::parse();
    let net = net_config(cli.net_fd, cli.tap, cli.mac);
    let built = match (cli.restore, cli.kernel) {
        (Some(dir), _) => builder::restore(
            &RestoreConfig {
                dir,
                console: cli.console,
                net,
                control: cli.control,
            },
            start,
        ),
        (None, Some(kernel)) => builder::build(
            &VmConfig {
                kernel,
                initrd: cli.initrd,
                cmdline: cli.cmdline,
                memory: cli.memory,
                vcpus: cli.vcpus,
                console: cli.console,
                net,
                control: cli.control,
            },
            start,
        ),
        // clap requires one of them.
        (None, None) => {
            eprintln!("{}", error_line(&"give --kernel or --restore"));
            return ExitCode::from(ExitStatus::Usage.code());
        }
    };
    let refused = |e: builder::Error| {
        eprintln!("{}", error_line(&e));
        let status = if e.is_host_exhaustion() {
            ExitStatus::NoResources
        } else {
            ExitStatus::Refused
        };
        ExitCode::from(status.code())
    };
    let machine = match built {
        Ok(m) => m,
        Err(e) => return refused(e),
    };
    let (outcome, trace) = match machine.run(ap_exit) {
        Ok(r) => r,
        Err(e) => return refused(e),
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
