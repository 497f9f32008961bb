//! `cargo run -p xtask -- docs OUT`: the man pages and shell completions of `unikerneld` and
//! `unikernelctl`, generated from the same clap definitions the programs parse with, so that
//! they cannot drift. The package build runs it (debian/rules); unikernels.kdl(5) is written
//! by hand (packaging/man/), since it documents a file format, not a command line.
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write OUT/man/*.{1,8} and OUT/completions/{bash,zsh,fish}/*
    Docs { out: PathBuf },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Docs { out } => docs(&out),
    }
}

fn docs(out: &Path) -> Result<()> {
    let man = out.join("man");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let daemon = unikerneld::cli::unikerneld::Cli::command();
    let ctl = unikerneld::cli::unikernelctl::Cli::command();
    page(&man, daemon.clone(), "8", "unikerneld")?;
    page(&man, ctl.clone(), "1", "unikernelctl")?;
    // One page per subcommand as well (unikernelctl-status(1), ...): the main page lists
    // them, theirs carry each one's options.
    for sub in ctl.get_subcommands() {
        let name = format!("unikernelctl-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        page(&man, sub, "1", &name)?;
    }
    for (shell, dir) in [(Shell::Bash, "bash"), (Shell::Zsh, "zsh"), (Shell::Fish, "fish")] {
        let dir = out.join("completions").join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for mut cmd in [daemon.clone(), ctl.clone()] {
            let name = cmd.get_name().to_string();
            clap_complete::generate_to(shell, &mut cmd, name, &dir)
                .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
        }
    }
    Ok(())
}

fn page(dir: &Path, cmd: clap::Command, section: &str, name: &str) -> Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("unikerneld")
        .source(format!("unikerneld {}", env!("CARGO_PKG_VERSION")))
        .render(&mut buf)
        .with_context(|| format!("rendering {name}({section})"))?;
    let path = dir.join(format!("{name}.{section}"));
    fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))
}
