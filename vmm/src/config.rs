//! What one VM is made of, as given on the command line, already validated.
use std::path::PathBuf;

pub use contract::console::ConsoleTarget;
pub use contract::size::MemSize;

/// Where a guest NIC's frames go on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// An open tap fd inherited from the parent (how the engine hands one over).
    Fd(i32),
    /// A tap opened (or created) by name; needs CAP_NET_ADMIN.
    Tap(String),
}

/// One virtio-net device.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub backend: NetBackend,
    /// `None`: derived from the tap's name ([`contract::mac::MacAddr::derived`]).
    pub mac: Option<contract::mac::MacAddr>,
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory: MemSize,
    pub vcpus: u8,
    pub console: ConsoleTarget,
    /// The console feed's socket (`--console-feed-fd`; needs a console socket).
    pub console_feed: Option<std::os::fd::RawFd>,
    pub net: Option<NetConfig>,
    /// The control socket (pause, resume, snapshot), if any.
    pub control: Option<ControlSocket>,
    /// Where KVM's supported CPUID is kept between VMMs (`vstate::cpuid_cache`).
    pub cpuid_cache: Option<PathBuf>,
}

/// Everything needed to resume a VM from a snapshot: the rest comes from the snapshot.
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    pub dir: PathBuf,
    pub console: ConsoleTarget,
    pub console_feed: Option<std::os::fd::RawFd>,
    /// Required when the snapshot has a NIC; its MAC is the snapshot's.
    pub net: Option<NetConfig>,
    pub control: Option<ControlSocket>,
}

/// Where control requests come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlSocket {
    /// Bind this path (`--control`).
    Path(PathBuf),
    /// Accept on this inherited socket, bound and listening already (`--control-fd`).
    Listening(std::os::fd::RawFd),
}

impl std::fmt::Display for ControlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlSocket::Path(path) => write!(f, "{}", path.display()),
            ControlSocket::Listening(fd) => write!(f, "fd {fd}"),
        }
    }
}
