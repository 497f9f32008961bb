//! `unikernelctl`: the command-line client of unikerneld. For now: `check` (like `nginx -t`)
//! and `plan` (like `terraform plan`); status, logs, start/stop come with the D-Bus API.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use unikerneld::decl::Loader;
use unikerneld::plan::{plan, Observed};

const DEFAULT_CONFIG_DIR: &str = "/etc/unikernels";
const DEFAULT_STATE_DIR: &str = "/run/unikerneld";

#[derive(Parser)]
#[command(
    name = "unikernelctl",
    version,
    about = "Control unikerneld, the unikernel host daemon."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a directory of declarations; exit 0 when valid, 1 when not
    Check {
        /// Directory of *.kdl declarations
        #[arg(default_value = DEFAULT_CONFIG_DIR)]
        dir: PathBuf,
    },
    /// Show what the daemon would do to reach the declarations: create, replace, stop
    Plan {
        /// Directory of *.kdl declarations
        #[arg(default_value = DEFAULT_CONFIG_DIR)]
        dir: PathBuf,
        /// Plan against nothing running, instead of the daemon's state
        #[arg(long)]
        offline: bool,
        /// Where the daemon keeps its runtime state
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

fn report(loaded: &unikerneld::decl::Loaded) {
    for d in &loaded.diagnostics {
        eprintln!("{:?}", miette::Report::new(d.clone()));
    }
}

/// Running services as the daemon records them: `<state>/services/<name>/spec-hash`.
fn observed(state_dir: &Path) -> std::io::Result<BTreeMap<String, Observed>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(state_dir.join("services"))? {
        let entry = entry?;
        let Ok(hash) = std::fs::read_to_string(entry.path().join("spec-hash")) else {
            continue;
        };
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            Observed {
                spec_hash: hash.trim().into(),
                spec: None,
            },
        );
    }
    Ok(out)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { dir } => {
            let loaded = Loader::default().load_dir(&dir);
            report(&loaded);
            let errors = loaded.errors().count();
            if errors == 0 {
                println!(
                    "{}: {} unikernel(s) declared, configuration OK",
                    dir.display(),
                    loaded.specs.len()
                );
                ExitCode::SUCCESS
            } else {
                println!(
                    "{}: {errors} error(s) in {} file(s)",
                    dir.display(),
                    loaded.failed_files.len().max(1)
                );
                ExitCode::FAILURE
            }
        }
        Command::Plan {
            dir,
            offline,
            state_dir,
        } => {
            let loaded = Loader::default().load_dir(&dir);
            report(&loaded);
            let running = if offline {
                BTreeMap::new()
            } else {
                match observed(&state_dir) {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("unikernelctl: cannot read the daemon's state in {}: {e} (is unikerneld running? use --offline to plan against nothing)", state_dir.display());
                        return ExitCode::FAILURE;
                    }
                }
            };
            println!("{}", plan(&loaded.specs, &running));
            if loaded.errors().count() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
