//! One `unikernel-vmm` process: spawned in its own process group (so neither the daemon's
//! exit nor a Ctrl-C on its terminal reaches it), watched through a pidfd (no pid reuse races,
//! works for VMs an earlier daemon started), stopped with a signal.
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;

/// What to run: the VMM and its arguments, and the fds to hand over.
pub struct Launch {
    pub vmm: PathBuf,
    pub args: Vec<OsString>,
    /// Inherited by the VMM under their own fd numbers (which `args` name): the tap, the
    /// guest command line.
    pub inherit: Vec<OwnedFd>,
    /// Receives the VMM's stderr (its one-line error when it stops); None: the daemon's.
    pub stderr: Option<std::fs::File>,
}

/// A live VMM process.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    /// Kernel start time of the process (clock ticks since boot, /proc/PID/stat field 22):
    /// with the pid, it names this process and no later one.
    pub start_ticks: u64,
    /// Shared with the future of [`Process::wait`]: one fd per VM, not two (at 5,000 VMs
    /// the copies were 5,000 fds of the daemon's limit).
    pidfd: std::sync::Arc<OwnedFd>,
    /// Whether this daemon is the parent (then it reaps it and learns its exit status).
    pub child: bool,
}

/// How a VMM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Exit status (0 clean stop, 1 guest died, 3 refused before start).
    Exited(i32),
    Signaled(i32),
    /// Not our child (adopted): the status went to its real parent.
    Unknown,
}

impl Ended {
    pub fn is_clean(self) -> bool {
        self == Ended::Exited(0)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => match contract::exit::ExitStatus::from_code(*c) {
                Some(s) => write!(f, "exit status {c} ({})", s.meaning()),
                None => write!(f, "exit status {c}"),
            },
            Ended::Signaled(s) => write!(f, "killed by signal {s}"),
            Ended::Unknown => write!(f, "ended (status unknown: started by an earlier daemon)"),
        }
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Field 22 of /proc/PID/stat (after the parenthesised command, which may hold spaces).
pub fn start_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    after
        .split(' ')
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("malformed stat"))
}

impl Process {
    /// Spawns the VMM. No code runs between fork and exec (no `pre_exec`), so the standard
    /// library can use posix_spawn (vfork-like): measured ~5 ms faster per VM than fork +
    /// exec from a daemon holding a thousand VMs' worth of fds and memory.
    pub fn spawn(launch: Launch) -> io::Result<Process> {
        let mut cmd = Command::new(&launch.vmm);
        cmd.args(&launch.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(launch.stderr.map_or_else(Stdio::inherit, Stdio::from));
        for fd in &launch.inherit {
            // Inherited under its own number: clear close-on-exec just for this spawn (the
            // engine spawns from one task, so no other child can pick it up meanwhile).
            // SAFETY: F_SETFD on an fd we own.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let child = cmd.spawn();
        drop(launch.inherit);
        let mut child = child?;
        let pid = child.id();
        // The pidfd keeps the process identifiable; `child` is dropped without waiting
        // (we reap through the pidfd). Without one (out of fds) the VMM would run with
        // nobody watching it: it ends here, and the caller retries the start.
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => std::sync::Arc::new(fd),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let start_ticks = start_ticks(pid).unwrap_or(0);
        Ok(Process {
            pid,
            start_ticks,
            pidfd,
            child: true,
        })
    }

    /// Takes over a VMM an earlier daemon started, if `pid` is still that process.
    pub fn adopt(pid: u32, expected_start_ticks: u64) -> Option<Process> {
        let pidfd = std::sync::Arc::new(pidfd_open(pid).ok()?);
        // Checked after opening the pidfd: if the start time still matches now, the fd
        // refers to the recorded process, not to a later one that reused the pid.
        if start_ticks(pid).ok()? != expected_start_ticks {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let exe = cmdline.split(|b| *b == 0).next()?;
        if !exe.ends_with(contract::VMM_BINARY.as_bytes()) {
            return None;
        }
        Some(Process {
            pid,
            start_ticks: expected_start_ticks,
            pidfd,
            child: false,
        })
    }

    /// Sends `signal` through the pidfd (never to a recycled pid).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no info, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // Already gone: that is what we wanted.
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Waits for the process to end (the pidfd turns readable), then reaps it if it is
    /// ours. Cancel-safe; needs a tokio reactor.
    pub fn wait(&self) -> impl std::future::Future<Output = io::Result<Ended>> + Send + 'static {
        let fd = self.pidfd.clone();
        let child = self.child;
        async move {
            // SAFETY: the Arc keeps the pidfd open for as long as the AsyncFd holds it.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            let _ready = fd.readable().await?;
            if !child {
                return Ok(Ended::Unknown);
            }
            // SAFETY: zeroed siginfo is a valid out-parameter for waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: P_PIDFD with our pidfd; `info` is a valid siginfo_t.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    fd.get_ref().as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: waitid filled in a SIGCHLD siginfo.
            let (code, status) = unsafe { (info.si_code, info.si_status()) };
            Ok(if code == libc::CLD_EXITED {
                Ended::Exited(status)
            } else {
                Ended::Signaled(status)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(program: &str, args: &[&str]) -> Launch {
        Launch {
            vmm: program.into(),
            args: args.iter().map(OsString::from).collect(),
            inherit: Vec::new(),
            stderr: Some(std::fs::File::create("/dev/null").unwrap()),
        }
    }

    #[tokio::test]
    async fn exit_status_and_signals_are_reported() {
        let p = Process::spawn(launch("/bin/sh", &["-c", "exit 7"])).unwrap();
        assert_eq!(p.wait().await.unwrap(), Ended::Exited(7));
        let p = Process::spawn(launch("/bin/sleep", &["60"])).unwrap();
        assert!(p.start_ticks > 0);
        p.signal(libc::SIGTERM).unwrap();
        assert_eq!(p.wait().await.unwrap(), Ended::Signaled(libc::SIGTERM));
        // Signalling a reaped process is not an error.
        p.signal(libc::SIGTERM).unwrap();
    }

    #[tokio::test]
    async fn adoption_checks_start_time_and_program() {
        let p = Process::spawn(launch("/bin/sleep", &["60"])).unwrap();
        assert!(Process::adopt(p.pid, p.start_ticks + 1).is_none(), "another start time");
        assert!(Process::adopt(p.pid, p.start_ticks).is_none(), "not unikernel-vmm");
        p.signal(libc::SIGKILL).unwrap();
        p.wait().await.unwrap();
    }

    #[tokio::test]
    async fn the_child_runs_in_its_own_process_group_and_gets_the_tap() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut l = launch("/bin/sleep", &["60"]);
        l.inherit = vec![a.into()];
        // `sleep` takes `--net-fd N` as junk and fails: use a shell that ignores its args.
        l.vmm = "/bin/sh".into();
        // `; :` keeps the shell itself running (no exec of the last command), so its
        // command line stays the one we gave.
        let fd = l.inherit[0].as_raw_fd().to_string();
        l.args = ["-c", "sleep 60; :", "sh", "--net-fd", &fd]
            .map(OsString::from)
            .to_vec();
        let p = Process::spawn(l).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        assert_eq!(fields[2], p.pid.to_string(), "process group id = its own pid");
        let mut cmdline = String::new();
        for _ in 0..200 {
            cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", p.pid)).unwrap();
            if cmdline.contains("--net-fd") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let fd: &str = cmdline.split('\0').rev().nth(1).unwrap();
        assert!(
            std::fs::read_link(format!("/proc/{}/fd/{fd}", p.pid))
                .unwrap()
                .to_string_lossy()
                .starts_with("socket:"),
            "the fd named by --net-fd is open in the child"
        );
        p.signal(libc::SIGKILL).unwrap();
        p.wait().await.unwrap();
    }
}
