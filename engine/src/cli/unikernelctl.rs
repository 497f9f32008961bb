//! The command line of `unikernelctl` (here, not in the binary, so that the man page and the
//! shell completions are generated from the same definition).
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_CONFIG_DIR: &str = "/etc/unikernels";

#[derive(Parser)]
#[command(
    name = "unikernelctl",
    version,
    about = "Control unikerneld, the unikernel host daemon (over D-Bus, org.unikerneld1).",
    after_help = "Exit status: 0 success; 1 failure (invalid declarations, a failed request); \
3 `status NAME`: the unikernel is neither running nor on standby; 4 no such unikernel; 5 unikerneld is not \
reachable on the system bus; 6 access denied (changing things needs root).\n\n\
DBUS_SYSTEM_BUS_ADDRESS selects another bus than the system one."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List the declared unikernels with their state
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's summary, or one unikernel in detail with its last console lines
    Status {
        name: Option<String>,
        /// Console lines to show
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u32,
        #[arg(long)]
        json: bool,
    },
    /// Boot a unikernel that is stopped or failed (and lift an operator's stop)
    Start { name: String },
    /// Stop a unikernel and hold it stopped until start, a change of its declaration, or a daemon restart
    Stop { name: String },
    /// Replace a unikernel's VM with a fresh one
    Restart { name: String },
    /// Save a running unikernel to a snapshot and end its VM (scale to zero); a connection
    /// to one of its exposed ports, or `wake`, resumes it
    Standby { name: String },
    /// Resume a unikernel on standby from its snapshot
    Wake { name: String },
    /// Print a unikernel's console lines
    Logs {
        name: String,
        /// How many of the last lines (at most 200 are kept)
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
        /// Keep printing new lines as they come
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon reload its declarations now (like systemctl reload)
    Reload,
    /// Fetch the git repository the daemon follows (--git) now, and apply a new revision
    /// or refuse it whole; exit 1 when it was refused or could not be fetched
    Sync,
    /// Validate a directory of declarations; exit 0 when valid, 1 when not (like nginx -t)
    Check {
        /// Directory of *.kdl declarations
        #[arg(default_value = DEFAULT_CONFIG_DIR)]
        dir: PathBuf,
        /// The daemon's address pool (its --pool): explicit addresses must lie in it
        #[arg(long, value_name = "CIDR", default_value = "10.200.0.0/16")]
        pool: crate::net::AddressPool,
    },
    /// Show what would change: the daemon's own plan, or DIR's declarations against what runs
    Plan {
        /// Directory of *.kdl declarations [default: the daemon's own directory]
        dir: Option<PathBuf>,
        /// Plan against nothing running (no daemon needed)
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
}
