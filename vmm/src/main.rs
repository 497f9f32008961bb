//! `unikernel-vmm`: boot one unikernel in one KVM VM, until it stops.
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use std::os::fd::{FromRawFd, RawFd};

use clap::Parser;
use contract::args::VmmArgs;
use contract::exit::{error_line, ExitStatus};
use vmm::builder::{self, Outcome};
use vmm::config::{ControlSocket, NetBackend, NetConfig, RestoreConfig, VmConfig};
use vmm::devices::legacy::serial::Serial;
use vmm::jail::{self, Jail};
use vmm::pool::Waited;
use vmm::seccomp;

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

/// The longest command line read from --cmdline-fd (Linux takes at most 2 KiB to 64 KiB
/// depending on the guest; the boot protocols check the real limit).
const MAX_CMDLINE_FD_BYTES: u64 = 1 << 20;

fn read_cmdline_fd(fd: RawFd) -> Result<String, String> {
    use std::io::Read;
    // SAFETY: the fd was named on our command line and is ours alone (inherited for us);
    // File owns and closes it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    file.take(MAX_CMDLINE_FD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("--cmdline-fd {fd}: {e}"))?;
    if text.len() as u64 > MAX_CMDLINE_FD_BYTES {
        return Err(format!("--cmdline-fd {fd}: longer than {MAX_CMDLINE_FD_BYTES} bytes"));
    }
    Ok(text)
}

/// Why a VM did not start, as the exit status says it: the host out of something (the
/// same VM may start a moment later) or this VM refused.
fn refused(e: builder::Error) -> ExitCode {
    eprintln!("{}", error_line(&e));
    let status = if e.is_host_exhaustion() {
        ExitStatus::NoResources
    } else {
        ExitStatus::Refused
    };
    ExitCode::from(status.code())
}

fn main() -> ExitCode {
    let mut start = Instant::now();
    // A panic is a VMM bug: the whole VM ends at once, with the error line, never a vCPU
    // thread alone (the release profile unwinds, for the daemon's sake).
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{}", error_line(&format!("internal error: {info}")));
        std::process::abort();
    }));
    let mut cli = VmmArgs::parse();
    let mut warm = None;
    if let Some(fd) = cli.pool_fd {
        // Nothing the parent left open by mistake reaches the guest's VMM; what it runs
        // comes with the hand-off.
        jail::close_inherited(&[fd]);
        match vmm::pool::wait(fd, &cli) {
            Ok(Waited::Run { args, warm: w, at }) => {
                cli = *args;
                warm = Some(w);
                start = at;
            }
            Ok(Waited::Nothing) => return ExitCode::SUCCESS,
            Err(vmm::pool::Error::Build(e)) => return refused(e),
            Err(e) => {
                eprintln!("{}", error_line(&e));
                return ExitCode::from(ExitStatus::Usage.code());
            }
        }
    } else {
        jail::close_inherited(
            &[cli.net_fd, cli.cmdline_fd, cli.control_fd, cli.console_feed_fd]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
        );
    }
    if let Some(fd) = cli.cmdline_fd {
        match read_cmdline_fd(fd) {
            Ok(text) => cli.cmdline = text,
            Err(e) => {
                eprintln!("{}", error_line(&e));
                return ExitCode::from(ExitStatus::Usage.code());
            }
        }
    }
    let jail = cli.jail_uid.zip(cli.jail_gid).map(|(uid, gid)| Jail {
        uid,
        gid,
        snapshot_dir: cli.snapshot_dir.clone(),
    });
    let snapshot_dir = cli.snapshot_dir.clone();
    // Once everything with a path is open: a restore calls it before it believes the
    // snapshot's state, a boot once the VM is built.
    let restoring = cli.restore.is_some();
    let mut enter_jail = || -> Result<(), jail::Error> {
        match (&jail, &snapshot_dir) {
            (Some(jail), _) => jail.enter(),
            (None, Some(dir)) => {
                if let Err(e) = jail::prepare_snapshot_dir(dir) {
                    vmm::log_warn!("{e}: saving this VM will fail");
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    };
    let net = net_config(cli.net_fd, cli.tap, cli.mac);
    let control = match (cli.control, cli.control_fd) {
        (Some(path), _) => Some(ControlSocket::Path(path)),
        (None, Some(fd)) => Some(ControlSocket::Listening(fd)),
        (None, None) => None,
    };
    let built = match (cli.restore, cli.kernel) {
        (Some(dir), _) => {
            let config = RestoreConfig {
                dir,
                console: cli.console,
                console_feed: cli.console_feed_fd,
                net,
                control,
            };
            match warm.take() {
                Some(warm) => builder::restore_warm(&config, warm, start, &mut enter_jail),
                None => builder::restore(&config, start, &mut enter_jail),
            }
        }
        (None, Some(kernel)) => {
            let config = VmConfig {
                kernel,
                initrd: cli.initrd,
                cmdline: cli.cmdline,
                memory: cli.memory,
                vcpus: cli.vcpus,
                console: cli.console,
                console_feed: cli.console_feed_fd,
                net,
                control,
                cpuid_cache: cli.cpuid_cache,
            };
            match warm {
                Some(warm) => builder::build_warm(&config, warm, start),
                None => builder::build(&config, start),
            }
        }
        // clap requires one of them.
        (None, None) => {
            eprintln!("{}", error_line(&"give --kernel or --restore"));
            return ExitCode::from(ExitStatus::Usage.code());
        }
    };
    let mut machine = match built {
        Ok(m) => m,
        Err(e) => return refused(e),
    };
    let filters = match (!cli.no_seccomp).then(seccomp::Filters::compile).transpose() {
        Ok(f) => f,
        Err(e) => return refused(e.into()),
    };
    if filters.is_some() {
        if let Err(e) = seccomp::install_handler() {
            return refused(builder::Error::Threads(format!("cannot handle SIGSYS: {e}")));
        }
    }
    machine.trace.mark("seccomp");
    machine.announce_start = cli.trace_boot;
    if !restoring {
        if let Err(e) = enter_jail() {
            return refused(e.into());
        }
        if jail.is_some() {
            machine.trace.mark("jail");
        }
    }
    let (outcome, trace) = match machine.run(ap_exit, filters) {
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
