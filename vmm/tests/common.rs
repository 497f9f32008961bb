//! Shared by the integration tests: the real `unikernel-vmm` binary, real /dev/kvm, and
//! the example unikernels (built on first use).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the example unikernels once per test binary and returns the path of `name`.
pub fn image(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let root = repo_root();
    BUILD.call_once(|| {
        // From inside the examples' folder, so cargo reads their .cargo/config.toml
        // (target, no-SSE codegen flags, freestanding link arguments).
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet"])
            .current_dir(root.join("examples/unikernels"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .expect("running cargo to build the example unikernels");
        assert!(
            out.status.success(),
            "building the example unikernels failed:\n{}",
            text(&out.stderr)
        );
    });
    let path = root
        .join("examples/unikernels/target/x86_64-unknown-linux-gnu/release")
        .join(name);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// Tests boot real guests: without KVM they fail, loudly, and never skip.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("these tests boot real VMs and need /dev/kvm: {e}");
    }
}

/// The `unikernel-vmm` binary: cargo names it for this package's tests; other packages'
/// tests (which include this file) find it beside their own target directory.
pub fn vmm_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_unikernel-vmm") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("unikernel-vmm");
    assert!(
        path.exists(),
        "{} not built: run the workspace's tests (cargo test --workspace)",
        path.display()
    );
    // `cargo test -p unikerneld` does not rebuild the VMM: refuse a binary older than the
    // VMM's sources rather than test the daemon against a stale one.
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    // Walked once per test binary, not once per VM the tests start.
    static NEWEST: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();
    let newest = *NEWEST.get_or_init(|| newest_mtime(&repo_root().join("vmm/src")));
    assert!(
        built >= newest,
        "{} is older than vmm/src: run `cargo build -p unikernel-vmm` (or cargo test --workspace)",
        path.display()
    );
    path
}

fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            entry.metadata().and_then(|m| m.modified()).unwrap_or(newest)
        };
        newest = newest.max(t);
    }
    newest
}

pub fn vmm() -> Command {
    Command::new(vmm_binary())
}

/// Runs `cmd`, killing it if it outlives `limit` (a hang is a failure, never a wait).
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Wraps a statically linked ELF (linked at 1 MiB, 64-bit entry 0x200 bytes in) as a
/// bzImage: a boot sector and one setup sector holding the setup header, then the flat
/// protected-mode kernel (the ELF's PT_LOAD file bytes laid out from 1 MiB).
pub fn make_bzimage(elf: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let phoff = le_u64(elf, 32) as usize;
    let phnum = u16::from_le_bytes([elf[56], elf[57]]) as usize;
    let mut flat = Vec::new();
    let mut mem_end = LOAD;
    for i in 0..phnum {
        let ph = &elf[phoff + i * 56..phoff + (i + 1) * 56];
        if ph[0] != 1 {
            continue;
        }
        let (off, paddr, filesz, memsz) = (le_u64(ph, 8), le_u64(ph, 24), le_u64(ph, 32), le_u64(ph, 40));
        let at = (paddr - LOAD) as usize;
        if flat.len() < at + filesz as usize {
            flat.resize(at + filesz as usize, 0);
        }
        flat[at..at + filesz as usize].copy_from_slice(&elf[off as usize..(off + filesz) as usize]);
        mem_end = mem_end.max(paddr + memsz);
    }
    let setup_sects = 1u8;
    let mut img = vec![0u8; 512 * (1 + usize::from(setup_sects))];
    img[0x1f1] = setup_sects;
    img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    img[0x211] = 0x01; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&(LOAD as u32).to_le_bytes()); // code32_start
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    img[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&0xffffu32.to_le_bytes()); // cmdline_size
    img[0x260..0x264].copy_from_slice(&((mem_end - LOAD) as u32).to_le_bytes()); // init_size
    img.extend_from_slice(&flat);
    img
}

/// A network namespace of the test's own (DESIGN: never configure the host's namespace),
/// removed when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("ukt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{e}"));
        ns
    }

    /// `ip -n <ns> ARGS`; the error says what failed.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        if !Path::new("/var/run/netns").join(&self.name).exists() {
            let out = Command::new("ip")
                .args(["netns", "add", &self.name])
                .output()
                .expect("ip (iproute2)");
            if !out.status.success() {
                return Err(format!("ip netns add {}: {}", self.name, text(&out.stderr)));
            }
        }
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("ip (iproute2)");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ip -n {} {}: {}", self.name, args.join(" "), text(&out.stderr)))
        }
    }

    /// A persistent tap `name` (with a virtio-net header, as the engine makes them), the
    /// host side of it at `cidr`, up.
    pub fn persistent_tap(&self, name: &str, cidr: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])
            .unwrap();
        self.ip(&["addr", "add", cidr, "dev", name]).unwrap();
        self.ip(&["link", "set", name, "up"]).unwrap();
    }

    /// The body of a 200 answer from the http guest at 10.0.0.2:80, trimmed.
    pub fn get(&self) -> String {
        let (status, body) = self.run(|| http_get("10.0.0.2:80")).expect("request");
        assert_eq!(status, 200);
        body.trim().to_string()
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has joined the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("namespace file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a valid namespace fd.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// One HTTP/1.1 GET on a fresh connection; returns (status, body). The client closes.
pub fn http_get(addr: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, "")
}

/// [`http_get`] with more header lines (each ending in `\r\n`).
pub fn http_get_with(addr: &str, headers: &str) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: guest\r\n{headers}\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((status, text(&body)))
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU time of every thread of `pid` so far, in nanoseconds (schedstat: exact, where
/// `cpu_ticks` counts in 10 ms steps).
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Kills and reaps a child when dropped, so a failing test leaves no VM behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a VMM's control socket (waiting up to 5 s for it to appear), its reply.
pub fn control(path: &Path, request: &contract::control::Request) -> contract::control::Reply {
    control_line(path, &format!("{request}\n"))
}

/// Saves the VM behind `sock` to `dir` and ends it (`snapshot exit`); what it cost.
pub fn save_and_exit(sock: &Path, dir: &Path) -> contract::control::Saved {
    let request = contract::control::Request::Snapshot {
        dir: dir.to_path_buf(),
        then: contract::control::AfterSnapshot::Exit,
    };
    control(sock, &request).saved().expect("snapshot")
}

/// One raw request line on a control socket, its reply.
pub fn control_line(path: &Path, line: &str) -> contract::control::Reply {
    use std::io::{BufRead, BufReader, Write};
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("control socket {}: {e}", path.display()),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    contract::control::Reply::parse(&reply)
}
