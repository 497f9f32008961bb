//! The VMM's command line, typed: the VMM parses it with clap, the daemon builds a
//! [`VmmArgs`] and turns it into argv with [`VmmArgs::to_argv`]. A test checks that every
//! field survives the round trip, so the two sides cannot drift apart.
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Parser;

use crate::console::ConsoleTarget;
use crate::mac::MacAddr;
use crate::size::MemSize;

#[derive(Parser, Debug, Clone, PartialEq, Eq)]
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
memory size, no /dev/kvm, a snapshot that cannot be restored); 4 saved to a snapshot and stopped \
(a `snapshot exit` request on the control socket).\n\n\
--restore DIR resumes a VM from a snapshot written through the control socket: guest memory is \
mapped from DIR/memory copy-on-write and loaded lazily; --kernel, --initrd, --cmdline, --memory \
and --vcpus come from the snapshot. The NIC needs a tap again (--net-fd or --tap)."
)]
pub struct VmmArgs {
    /// Kernel image to boot: PVH ELF, ELF64 vmlinux-style, bzImage, or multiboot
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "pool_fd"])]
    pub kernel: Option<PathBuf>,

    /// Resume the VM saved in this snapshot directory instead of booting a kernel
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd"])]
    pub restore: Option<PathBuf>,

    /// Listen on this unix socket for control requests (pause, resume, snapshot; see the
    /// contract crate's `control` module for the protocol)
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve control requests on this inherited unix socket, bound and listening already
    /// (the daemon binds it: a client can connect from the moment the VMM is spawned)
    #[arg(long, value_name = "N", conflicts_with = "control")]
    pub control_fd: Option<RawFd>,

    /// Initial ramdisk, placed at the top of low memory and announced to the kernel
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line, passed verbatim
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,

    /// Guest memory: bytes, or with a suffix K, M, G (e.g. 16M); must fit in host RAM
    #[arg(long, value_name = "SIZE", default_value = "16M")]
    pub memory: MemSize,

    /// Number of vCPUs; vCPU 0 boots, the others wait for the guest to start them
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,

    /// Where the serial console (COM1) goes: `stdout`, `off`, a file path (appended to), or
    /// `unix:PATH`, a socket the VMM listens on: a client first gets "<n> <total>\n" and the last n
    /// bytes of output (at most 64 KiB), then the live output; a new client replaces the old
    #[arg(long, value_name = "stdout|off|PATH|unix:PATH", default_value = "stdout")]
    pub console: ConsoleTarget,

    /// Also send the console, line by line, as datagrams on this inherited unix datagram
    /// socket, connected already (the daemon's console feed; frames: the contract crate's
    /// `console` module). Needs --console unix:PATH, whose ring a later feed replays
    #[arg(long, value_name = "N")]
    pub console_feed_fd: Option<RawFd>,

    /// Give the guest a virtio-net NIC on this already-open tap fd (inherited; IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)
    #[arg(long, value_name = "N", conflicts_with = "tap")]
    pub net_fd: Option<RawFd>,

    /// Give the guest a virtio-net NIC on the tap of this name, opening or creating it (needs CAP_NET_ADMIN)
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,

    /// The NIC's MAC address, like 52:54:00:12:34:56 [default: a locally administered
    /// address derived from the tap's name, the same at every start]
    #[arg(long, value_name = "MAC")]
    pub mac: Option<MacAddr>,

    /// Read the kernel command line from this inherited fd (a sealed memfd, say) instead
    /// of --cmdline: what is in it (secrets) never shows in /proc/PID/cmdline
    #[arg(long, value_name = "N", conflicts_with = "cmdline")]
    pub cmdline_fd: Option<RawFd>,

    /// Jail the VMM once its VM is built: run as this uid (and --jail-gid) with no
    /// capabilities and no_new_privs, in new mount, IPC and UTS namespaces whose root is an
    /// empty read-only tmpfs. Needs root; give each VM a uid of its own
    #[arg(long, value_name = "UID", requires = "jail_gid", value_parser = clap::value_parser!(u32).range(1..))]
    pub jail_uid: Option<u32>,

    /// The jailed VMM's gid (with --jail-uid)
    #[arg(long, value_name = "GID", requires = "jail_uid", value_parser = clap::value_parser!(u32).range(1..))]
    pub jail_gid: Option<u32>,

    /// Where snapshots go: created (0700) before the VM runs and, in a jail, the one host
    /// directory left visible, owned by the jail's uid
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// Keep KVM's supported CPUID in this file between VMMs (it is the same until the host
    /// reboots; asking KVM costs ~0.4 ms of every start): read when it is this boot's,
    /// written when it is not
    #[arg(long, value_name = "PATH")]
    pub cpuid_cache: Option<PathBuf>,

    /// Run without the seccomp filters (for debugging a VMM that ends with exit status 6)
    #[arg(long)]
    pub no_seccomp: bool,

    /// Print the time spent in each boot phase to stderr when the VM stops
    #[arg(long, hide = true)]
    pub trace_boot: bool,

    /// Warm pool: create the VM (--memory, --vcpus) now, say "ready" on this inherited
    /// SOCK_SEQPACKET socket and wait for what to run (see the contract crate's `pool`
    /// module); exit quietly when the other end closes
    #[arg(long, value_name = "N", conflicts_with_all = ["kernel", "restore"])]
    pub pool_fd: Option<RawFd>,

    /// The daemon state directory's services folder a pooled VMM belongs to (only a
    /// label, so that a later daemon recognises the VMMs of its own pool)
    #[arg(long, value_name = "DIR", requires = "pool_fd")]
    pub pool_of: Option<PathBuf>,

    /// Room for the handed-off arguments in /proc/PID/cmdline: only its length counts
    #[arg(long, value_name = "SPACES", requires = "pool_fd", hide = true)]
    pub pool_room: Option<String>,
}

impl VmmArgs {
    /// The arguments for a VM of `kernel` with every other setting at its default.
    pub fn new(kernel: PathBuf) -> VmmArgs {
        VmmArgs {
            kernel: Some(kernel),
            restore: None,
            control: None,
            control_fd: None,
            initrd: None,
            cmdline: String::new(),
            memory: MemSize::from_bytes(16 * MemSize::MIB),
            vcpus: 1,
            console: ConsoleTarget::Stdout,
            console_feed_fd: None,
            net_fd: None,
            tap: None,
            mac: None,
            cmdline_fd: None,
            jail_uid: None,
            jail_gid: None,
            snapshot_dir: None,
            cpuid_cache: None,
            no_seccomp: false,
            trace_boot: false,
            pool_fd: None,
            pool_of: None,
            pool_room: None,
        }
    }

    /// argv without the program name, in the form [`VmmArgs`] parses.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        let mut arg = |name: &str, value: OsString| {
            argv.push(format!("--{name}").into());
            argv.push(value);
        };
        if let Some(kernel) = &self.kernel {
            arg("kernel", kernel.clone().into());
        }
        if let Some(dir) = &self.restore {
            arg("restore", dir.clone().into());
        }
        if let Some(control) = &self.control {
            arg("control", control.clone().into());
        }
        if let Some(fd) = self.control_fd {
            arg("control-fd", fd.to_string().into());
        }
        // A restore takes these from the snapshot: they are not passed (nor shown in ps).
        if self.restore.is_none() {
            if let Some(initrd) = &self.initrd {
                arg("initrd", initrd.clone().into());
            }
            match self.cmdline_fd {
                Some(fd) => arg("cmdline-fd", fd.to_string().into()),
                None => arg("cmdline", self.cmdline.clone().into()),
            }
            arg("memory", self.memory.bytes().to_string().into());
            arg("vcpus", self.vcpus.to_string().into());
        }
        arg("console", console_arg(&self.console));
        if let Some(fd) = self.console_feed_fd {
            arg("console-feed-fd", fd.to_string().into());
        }
        if let Some(fd) = self.net_fd {
            arg("net-fd", fd.to_string().into());
        }
        if let Some(tap) = &self.tap {
            arg("tap", tap.into());
        }
        if let Some(mac) = self.mac {
            arg("mac", mac.to_string().into());
        }
        if let (Some(uid), Some(gid)) = (self.jail_uid, self.jail_gid) {
            arg("jail-uid", uid.to_string().into());
            arg("jail-gid", gid.to_string().into());
        }
        if let Some(dir) = &self.snapshot_dir {
            arg("snapshot-dir", dir.clone().into());
        }
        if let (Some(path), None) = (&self.cpuid_cache, &self.restore) {
            arg("cpuid-cache", path.clone().into());
        }
        if let Some(fd) = self.pool_fd {
            arg("pool-fd", fd.to_string().into());
        }
        if let Some(dir) = &self.pool_of {
            arg("pool-of", dir.clone().into());
        }
        if let Some(room) = &self.pool_room {
            arg("pool-room", room.into());
        }
        if self.no_seccomp {
            argv.push("--no-seccomp".into());
        }
        if self.trace_boot {
            argv.push("--trace-boot".into());
        }
        argv
    }
}

/// The console target as an argument, without going through UTF-8 (paths need not be).
fn console_arg(target: &ConsoleTarget) -> OsString {
    match target {
        ConsoleTarget::Socket(p) => {
            let mut s = OsString::from("unix:");
            s.push(p);
            s
        }
        ConsoleTarget::File(p) => p.clone().into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(args: &VmmArgs) -> VmmArgs {
        let mut argv = vec![OsString::from("unikernel-vmm")];
        argv.extend(args.to_argv());
        VmmArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn every_field_survives_argv() {
        let minimal = VmmArgs::new("/images/hello".into());
        assert_eq!(round_trip(&minimal), minimal);
        let full = VmmArgs {
            kernel: Some("/images/http".into()),
            restore: None,
            control: Some("/run/unikerneld/services/web/control.sock".into()),
            control_fd: None,
            initrd: Some("/srv/initrd".into()),
            cmdline: "ip=10.0.0.2/24 gw=10.0.0.1 -- --app arg".into(),
            memory: "32M".parse().unwrap(),
            vcpus: 4,
            console: ConsoleTarget::Socket("/run/unikerneld/services/web/console.sock".into()),
            console_feed_fd: Some(12),
            net_fd: Some(7),
            tap: None,
            mac: Some(MacAddr::derived("web")),
            cmdline_fd: None,
            jail_uid: Some(2063597568),
            jail_gid: Some(2063597568),
            snapshot_dir: Some("/var/lib/unikerneld/snapshots/web".into()),
            cpuid_cache: Some("/run/unikerneld/cpuid".into()),
            no_seccomp: true,
            trace_boot: true,
            pool_fd: None,
            pool_of: None,
            pool_room: None,
        };
        assert_eq!(round_trip(&full), full);
        let pooled = VmmArgs {
            kernel: None,
            pool_fd: Some(3),
            pool_of: Some("/run/unikerneld/services".into()),
            pool_room: Some(" ".repeat(64)),
            cpuid_cache: Some("/run/unikerneld/cpuid".into()),
            memory: "32M".parse().unwrap(),
            vcpus: 2,
            ..minimal.clone()
        };
        assert_eq!(round_trip(&pooled), pooled);
        let by_name = VmmArgs {
            tap: Some("uk-web".into()),
            mac: Some("52:54:00:00:00:02".parse().unwrap()),
            console: ConsoleTarget::File("/tmp/console log".into()),
            ..minimal
        };
        assert_eq!(round_trip(&by_name), by_name);
        let secret = VmmArgs {
            cmdline: String::new(),
            cmdline_fd: Some(9),
            ..full.clone()
        };
        assert_eq!(round_trip(&secret), secret);
        let listening = VmmArgs {
            control: None,
            control_fd: Some(11),
            ..full.clone()
        };
        assert_eq!(round_trip(&listening), listening);
        assert!(!secret.to_argv().iter().any(|a| a == "--cmdline"));
        let restore = VmmArgs {
            kernel: None,
            restore: Some("/var/lib/unikerneld/snapshots/web".into()),
            initrd: None,
            cmdline: String::new(),
            memory: minimal.memory,
            vcpus: 1,
            cpuid_cache: None,
            ..full
        };
        assert_eq!(round_trip(&restore), restore);
        let argv = restore.to_argv();
        assert!(!argv.iter().any(|a| a == "--cmdline" || a == "--memory"), "{argv:?}");
    }

    #[test]
    fn the_parser_refuses_what_the_vmm_cannot_run() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["unikernel-vmm", "--kernel", "/k"];
            argv.extend(extra);
            VmmArgs::try_parse_from(argv)
        };
        assert!(parse(&["--net-fd", "3"]).is_ok(), "the MAC is derived when not given");
        assert!(parse(&["--net-fd", "3", "--tap", "t", "--mac", "52:54:00:00:00:01"]).is_err());
        assert!(parse(&["--memory", "lots"]).is_err());
        assert!(parse(&["--mac", "01:00:00:00:00:00"]).is_err(), "multicast");
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--restore", "/s"]).is_err(), "a kernel or a snapshot, not both");
        assert!(VmmArgs::try_parse_from(["unikernel-vmm"]).is_err(), "one of them");
        assert!(VmmArgs::try_parse_from(["unikernel-vmm", "--restore", "/s", "--net-fd", "3"]).is_ok());
        assert!(parse(&["--jail-uid", "5000"]).is_err(), "a uid needs its gid");
        assert!(
            parse(&["--jail-uid", "0", "--jail-gid", "0"]).is_err(),
            "root is no jail"
        );
        assert!(parse(&["--cmdline", "x", "--cmdline-fd", "3"]).is_err());
        assert!(
            parse(&["--pool-fd", "3"]).is_err(),
            "a pooled VMM gets its kernel later"
        );
        assert!(VmmArgs::try_parse_from(["unikernel-vmm", "--pool-fd", "3"]).is_ok());
        assert!(VmmArgs::try_parse_from(["unikernel-vmm", "--pool-of", "/d"]).is_err());
    }
}
