//! `unikerneld`: makes a directory of KDL declarations the truth about which unikernels
//! this host runs.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::error;
use unikerneld::cli::unikerneld::{Cli, Network, BUILT_IN_VMM};
use unikerneld::daemon::{self, Config};
use unikerneld::net::Mode;
use unikerneld::source::git::{self, GitConfig};

fn default_vmm() -> PathBuf {
    if let Some(path) = BUILT_IN_VMM.map(PathBuf::from).filter(|p| p.exists()) {
        return path;
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(contract::VMM_BINARY)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(contract::VMM_BINARY))
}

/// Each VM costs the daemon a few fds (pidfd, console socket, listening sockets): use the
/// whole hard limit, and say so (the unit's LimitNOFILE sets the hard limit).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!("RLIMIT_NOFILE: {old} -> {}", lim.rlim_cur);
            } else {
                tracing::warn!(
                    "cannot raise RLIMIT_NOFILE from {old} to {}: {}",
                    lim.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn config(cli: Cli) -> Result<Config, String> {
    let git = match cli.git {
        None => None,
        Some(url) if url.starts_with('-') => return Err(format!("--git {url:?} is not a URL")),
        Some(url) => Some(GitConfig {
            url,
            reference: cli.git_ref,
            path: git::expand_path(&cli.git_path, &git::host_name())?,
            poll: cli.git_poll,
            dir: cli.git_dir,
            allowed_signers: cli.git_allowed_signers,
        }),
    };
    Ok(Config {
        config_dir: git.as_ref().map(GitConfig::declarations_dir).unwrap_or(cli.config_dir),
        state_dir: cli.state_dir,
        snapshot_dir: cli.snapshot_dir,
        vmm: cli.vmm.unwrap_or_else(default_vmm),
        resync_every: Duration::from_secs(cli.resync.max(1)),
        mode: match cli.network {
            Network::Routed => Mode::Routed,
            Network::Bridged => Mode::Bridged { bridge: cli.bridge },
        },
        pool: cli.pool,
        git,
        metrics: cli.metrics,
        vm_uids: cli.vm_uids,
        warm_pool: cli.warm_pool,
    })
}

fn main() -> ExitCode {
    unikerneld::panic::abort_on_panic();
    let config = match config(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unikerneld: {e}");
            return ExitCode::from(2);
        }
    };
    unikerneld::systemd::init_logging();
    raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unikerneld: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("unikerneld: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
