//! A private dbus-daemon with Debian's system bus configuration (its policy defaults:
//! nobody may own names or call methods unless a policy file allows it) and our policy
//! file from packaging/dbus/ in place of the host's system.d.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateBus {
    pub address: String,
    child: Child,
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(rel)
}

impl PrivateBus {
    pub fn start(dir: &Path) -> PrivateBus {
        let system = std::fs::read_to_string("/usr/share/dbus-1/system.conf")
            .expect("Debian's system bus configuration (package dbus)");
        let socket = dir.join("system_bus_socket");
        let policy = repo_file("packaging/dbus/org.unikerneld1.conf");
        let mut conf = String::new();
        for line in system.lines() {
            let t = line.trim();
            let drop = t.starts_with("<user>")
                || t == "<fork/>"
                || t.starts_with("<pidfile>")
                || t == "<syslog/>"
                || t.starts_with("<servicehelper>")
                || t == "<standard_system_servicedirs/>"
                || t.starts_with("<include")
                || t.contains("contexts/dbus_contexts");
            if drop {
                continue;
            }
            if t.starts_with("<listen>") {
                conf.push_str(&format!("  <listen>unix:path={}</listen>\n", socket.display()));
            } else if t == "</busconfig>" {
                conf.push_str(&format!("  <include>{}</include>\n</busconfig>\n", policy.display()));
            } else {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        let conf_path = dir.join("system-bus.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf_path.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus)");
        let t0 = Instant::now();
        while !socket.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Others (the nobody user of the access test) must reach the socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        PrivateBus {
            address: format!("unix:path={}", socket.display()),
            child,
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
