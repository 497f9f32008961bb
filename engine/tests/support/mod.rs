//! A real `unikerneld` in a network namespace of the test's own, with a temporary
//! declaration directory and state directory. Dropping it kills the daemon and every VM
//! it recorded (VMs outlive the daemon on purpose, so the test must clean them up).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#![allow(dead_code)]
#[path = "../../../vmm/tests/common.rs"]
pub mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub mod bus;

pub use common::*;
use unikerneld::status::{Snapshot, State, Status};

pub struct Daemon {
    pub ns: Netns,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// Extra daemon arguments.
    pub args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) for the daemon, when a test wants it low.
    pub nofile: Option<u64>,
    /// A cgroup (v1 or v2 directory with `cgroup.procs`) to start the daemon in.
    pub cgroup: Option<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    /// An empty setup; call [`Daemon::start`] to run the daemon.
    pub fn new(tag: &str) -> Daemon {
        require_kvm();
        let dir = std::env::temp_dir().join(format!("ukd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        Daemon {
            ns: Netns::new(tag),
            state: dir.join("state"),
            log: dir.join("daemon.log"),
            conf,
            dir,
            args: Vec::new(),
            nofile: None,
            cgroup: None,
            child: None,
        }
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the daemon and returns at once (its first reconcile may be under way).
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self.command();
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("unikerneld"));
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        self.spawn_with(env);
        self.wait_for("the daemon's first status", Duration::from_secs(10), |_| true);
    }

    /// The daemon's command line for this setup, inside the namespace.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = self.ns.command(Path::new(env!("CARGO_BIN_EXE_unikerneld")));
        // Following git, the declarations come from the repository, not from `conf`.
        if !self.args.iter().any(|a| a == "--git") {
            cmd.arg("--config-dir").arg(&self.conf);
        }
        cmd.arg("--state-dir")
            .arg(&self.state)
            .arg("--snapshot-dir")
            .arg(self.snapshots())
            .arg("--vmm")
            .arg(vmm_binary())
            .args(&self.args)
            .env("RUST_LOG", "info");
        if let Some(procs) = self.cgroup.as_ref().map(|c| c.join("cgroup.procs")) {
            use std::os::unix::process::CommandExt;
            let procs = std::ffi::CString::new(procs.to_str().unwrap()).unwrap();
            // SAFETY: open/write/close/getpid are async-signal-safe; the buffer is ours.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let mut buf = [0u8; 16];
                    let mut pid = libc::getpid() as u32;
                    let mut i = buf.len();
                    loop {
                        i -= 1;
                        buf[i] = b'0' + (pid % 10) as u8;
                        pid /= 10;
                        if pid == 0 {
                            break;
                        }
                    }
                    let n = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
                    libc::close(fd);
                    if n < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; the limit is inherited through exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        }
        cmd
    }

    /// Where the daemon keeps the snapshots of services on standby.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Kills the daemon the hard way (kill -9); its VMs must survive.
    pub fn kill_daemon(&mut self) {
        let mut child = self.child.take().expect("running");
        // `ip netns exec` execs the daemon, so this pid is the daemon itself.
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_file(self.state.join("status.json"));
    }

    /// Stops the daemon as systemd does (SIGTERM) and waits for it; its VMs run on.
    pub fn stop_daemon(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the daemon this test started (`ip netns exec` execs it).
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(status.success(), "the daemon ended with {status}");
        let _ = std::fs::remove_file(self.state.join("status.json"));
    }

    pub fn daemon_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        let data = std::fs::read(self.state.join("status.json")).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Polls the status until `cond` holds; a timeout fails with the status and the log.
    pub fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.snapshot() {
                if cond(&s) {
                    return s;
                }
            }
            if t0.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}\nstatus: {:#?}\ndaemon log:\n{}",
                    self.snapshot(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn service(&self, name: &str) -> Option<Status> {
        self.snapshot()?
            .services
            .into_iter()
            .find(|s| s.name == name)
            .map(std::sync::Arc::unwrap_or_clone)
    }

    /// Waits until `name` is running and returns its status.
    pub fn running(&self, name: &str) -> Status {
        let s = self.wait_for(&format!("{name} running"), Duration::from_secs(20), |s| {
            s.services.iter().any(|x| x.name == name && x.state == State::Running)
        });
        std::sync::Arc::unwrap_or_clone(s.services.into_iter().find(|x| x.name == name).unwrap())
    }

    /// Writes a declaration file atomically, as an editor would (temp file + rename).
    pub fn declare(&self, file: &str, text: &str) {
        let tmp = self.conf.join(format!(".{file}.swp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.conf.join(file)).unwrap();
    }

    pub fn undeclare(&self, file: &str) {
        std::fs::remove_file(self.conf.join(file)).unwrap();
    }

    /// HTTP GET to a host port, from inside the namespace.
    pub fn get(&self, port: u16) -> std::io::Result<(u16, String)> {
        self.ns.run(move || http_get(&format!("127.0.0.1:{port}")))
    }

    /// `ip ARGS` inside the namespace; panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        let st = std::process::Command::new("ip")
            .arg("-n")
            .arg(&self.ns.name)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    /// Names of the links in the namespace that start with `uk-` (service taps).
    /// Waits until the namespace's taps are `want` (the daemon deletes taps in the
    /// background, ~20 ms each here), and fails with what is there after 20 s.
    pub fn taps_become(&self, want: &[&str]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.taps() != want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.taps(), want);
    }

    pub fn taps(&self) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.ns.name, "-o", "link", "show"])
            .output()
            .unwrap();
        let mut taps: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n.starts_with("uk-"))
            .collect();
        // By name: `ip link` lists by creation, which a burst's starts do not fix.
        taps.sort();
        taps
    }

    /// Pids of every VM the state directory records.
    pub fn recorded_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir(self.state.join("services"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(data) = std::fs::read(e.path().join("vm.json")) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) {
                    pids.push(v["pid"].as_u64().unwrap() as u32);
                }
            }
        }
        pids
    }
}

impl Daemon {
    /// The daemon's children that wait in the warm pool (`--pool-fd` still on their
    /// command line: a hand-off rewrites it).
    pub fn pooled(&self) -> Vec<u32> {
        let daemon = self.daemon_pid().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat.rsplit(')').next()?.split(' ').nth(2)?.to_string();
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                (ppid == daemon && cmdline.windows(9).any(|w| w == b"--pool-fd")).then_some(pid)
            })
            .collect()
    }

    /// Every live VMM process of this state directory, recorded or not, with its service
    /// (found by its console socket path, as the daemon's own sweep finds them).
    pub fn vmm_processes(&self) -> Vec<(u32, String)> {
        let prefix = format!("unix:{}/", self.state.join("services").display());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first().is_some_and(|a| a.ends_with("unikernel-vmm")) || !alive(pid) {
                continue;
            }
            let service = args
                .windows(2)
                .find(|w| w[0] == "--console")
                .and_then(|w| w[1].strip_prefix(&prefix))
                .and_then(|rest| rest.strip_suffix("/console.sock"));
            if let Some(service) = service {
                out.push((pid, service.to_string()));
            }
        }
        out.sort();
        out
    }
}

/// A benchmark's size knob: `key` from the environment, else `default`.
pub fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `p` quantile (0..=1) of `v`.
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Resident memory of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn alive(pid: u32) -> bool {
    // A zombie is not alive; /proc/PID/stat's state field says.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let found = self.vmm_processes().into_iter().map(|(pid, _)| pid);
        for pid in self.recorded_pids().into_iter().chain(found) {
            // SAFETY: kill(2) on a VMM of this test's state directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A declaration of the http example serving `name` on host port `port`.
pub fn http_decl(name: &str, port: u16, extra: &str) -> String {
    format!(
        "unikernel \"{name}\" {{\n    image \"{}\"\n    cmdline \"name={name} port=80\"\n    net {{ expose {port} guest=80 }}\n{extra}}}\n",
        image("http").display()
    )
}
