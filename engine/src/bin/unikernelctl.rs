//! `unikernelctl`: the command-line client of unikerneld, a thin client of its D-Bus API
//! (`check` and `plan --offline` work without a daemon).
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use unikerneld::cli::unikernelctl::{Cli, Command, DEFAULT_CONFIG_DIR};
use unikerneld::dbus::client::{ManagerProxy, UnikernelProxy};
use unikerneld::dbus::properties;
use unikerneld::decl::Loader;
use unikerneld::plan::{plan, Observed};
use unikerneld::source::short_id;
use unikerneld::status::DeclarationError;
use zbus::Connection;

/// Exit statuses, for scripts (systemctl's where they overlap).
mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const NOT_RUNNING: u8 = 3;
    pub const NO_SUCH_UNIKERNEL: u8 = 4;
    pub const NO_DAEMON: u8 = 5;
    pub const ACCESS_DENIED: u8 = 6;
}

/// An error with the exit status that says what kind it is.
struct Failure(u8, String);

type Result<T> = std::result::Result<T, Failure>;

fn bus_error(e: zbus::Error) -> Failure {
    if let zbus::Error::MethodError(name, msg, _) = &e {
        let msg = msg.clone().unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => Failure(
                exit::NO_DAEMON,
                "unikerneld is not running (nobody owns org.unikerneld1 on the system bus)".into(),
            ),
            "org.freedesktop.DBus.Error.AccessDenied" => Failure(
                exit::ACCESS_DENIED,
                format!(
                    "access denied: changing unikernels needs root, reading consoles root or the unikerneld group ({msg})"
                ),
            ),
            "org.unikerneld1.Error.NoSuchUnikernel" => Failure(exit::NO_SUCH_UNIKERNEL, msg),
            _ => Failure(exit::FAILED, format!("{name}: {msg}")),
        };
    }
    Failure(exit::NO_DAEMON, format!("cannot reach the system bus: {e}"))
}

async fn connect() -> Result<Connection> {
    Connection::system().await.map_err(bus_error)
}

async fn manager(conn: &Connection) -> Result<ManagerProxy<'_>> {
    ManagerProxy::new(conn).await.map_err(bus_error)
}

async fn unikernel<'a>(conn: &'a Connection, name: &str) -> Result<UnikernelProxy<'a>> {
    let path = manager(conn).await?.get_unikernel(name).await.map_err(bus_error)?;
    UnikernelProxy::builder(conn)
        .path(path)
        .map_err(bus_error)?
        .build()
        .await
        .map_err(bus_error)
}

/// Everything about one unikernel, read from its object in one GetAll; JSON fields are
/// named by the daemon's one property table, so a new property shows up here by itself.
async fn describe(conn: &Connection, u: &UnikernelProxy<'_>, lines: u32) -> Result<serde_json::Value> {
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(unikerneld::dbus::BUS_NAME)
        .map_err(bus_error)?
        .path(u.inner().path().clone())
        .map_err(bus_error)?
        .build()
        .await
        .map_err(bus_error)?;
    let iface = zbus::names::InterfaceName::from_static_str_unchecked(properties::INTERFACE);
    let all = props.get_all(iface).await.map_err(|e| bus_error(e.into()))?;
    let mut v = serde_json::Map::new();
    for (dbus_name, json_name) in properties::PROPERTIES {
        if let Some(value) = all.get(dbus_name) {
            v.insert(json_name.to_string(), properties::to_json(value));
        }
    }
    // Consoles are root's and the unikerneld group's: anyone else gets the rest.
    let logs = match u.logs(lines).await {
        Ok(lines) => json!(lines),
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" => {
            serde_json::Value::Null
        }
        Err(e) => return Err(bus_error(e)),
    };
    v.insert("logs".into(), logs);
    Ok(serde_json::Value::Object(v))
}

fn print_status(v: &serde_json::Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let dot = match s("state").as_str() {
        "running" => "●",
        "standby" => "◐",
        _ => "○",
    };
    println!("{dot} {} - unikernel", s("name"));
    let held = if v["held"].as_bool() == Some(true) {
        " (stopped by an operator; `unikernelctl start` lifts it)"
    } else {
        ""
    };
    println!("     State: {}{held}", s("state"));
    println!("    Source: {}:{}", s("source_file"), n("source_line"));
    if n("pid") != 0 {
        println!("       PID: {}", n("pid"));
    }
    if !s("address").is_empty() {
        println!("   Address: {}", s("address"));
    }
    let ports: Vec<String> = v["exposed_ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} -> {}", p[0], p[1]))
        .collect();
    if !ports.is_empty() {
        println!("   Exposed: {}", ports.join(", "));
    }
    println!("    Memory: {} MiB", n("memory_bytes") >> 20);
    if n("boot_time_usec") != 0 {
        println!(
            "      Boot: {:.1} ms (spawn -> running)",
            n("boot_time_usec") as f64 / 1000.0
        );
    }
    println!("  Restarts: {}", n("restarts"));
    if !s("standby_settings").is_empty() {
        println!("   Standby: {}", s("standby_settings"));
        let mut line = format!("     Wakes: {}", n("wakes"));
        if n("last_wake_usec") != 0 {
            line += &format!(" (last: {:.1} ms)", n("last_wake_usec") as f64 / 1000.0);
        }
        println!("{line}");
    }
    if n("snapshot_bytes") != 0 {
        println!("  Snapshot: {} KiB of guest memory", n("snapshot_bytes") / 1024);
    }
    if !s("last_error").is_empty() {
        println!("Last error: {}", s("last_error"));
    }
    println!("  Spec hash: {}", s("spec_hash"));
    let logs: Vec<&str> = v["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect();
    if v["logs"].is_null() {
        println!();
        println!("(console lines: root and members of the unikerneld group only)");
    }
    if !logs.is_empty() {
        println!();
        for l in logs {
            println!("{l}");
        }
    }
}

fn print_plan(entries: &[(String, String, Vec<String>)], json_out: bool) {
    if json_out {
        let v: Vec<_> = entries
            .iter()
            .map(|(n, a, c)| json!({"name": n, "action": a, "changed": c}))
            .collect();
        let v = serde_json::Value::Array(v);
        println!("{v:#}");
        return;
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, action, changed) in entries {
        *counts.entry(action.as_str()).or_default() += 1;
        match action.as_str() {
            "create" => println!("  + {name} (create)"),
            "replace" => println!("  ~ {name} (replace: {} changed)", changed.join(", ")),
            "update" => println!(
                "  ~ {name} (update in place: {} changed, the VM keeps running)",
                changed.join(", ")
            ),
            "stop" => println!("  - {name} (stop: no longer declared)"),
            _ => {}
        }
    }
    println!("{}", unikerneld::plan::summary(|k| counts.get(k).copied().unwrap_or(0)));
}

fn report(loaded: &unikerneld::decl::Loaded) {
    for d in &loaded.diagnostics {
        eprintln!("{:?}", miette::Report::new(d.clone()));
    }
}

async fn run(command: Command) -> Result<u8> {
    match command {
        Command::Check { dir, mut pool } => {
            let mut loader = Loader::default();
            let loaded = loader.load_dir(&dir);
            // The process ends right after: freeing every file's specs one by one (a
            // seventh of a check of 10,000 files) is the kernel's job then.
            std::mem::forget(loader);
            report(&loaded);
            // What only the daemon's pool can tell: an explicit address outside it, or one
            // it keeps for itself (network, gateway, broadcast).
            let mut pool_errors = 0;
            for spec in loaded.specs.values() {
                if let Some(address) = spec.net.as_ref().and_then(|n| n.address) {
                    if let Err(e) = pool.reserve(&spec.name, address) {
                        pool_errors += 1;
                        eprintln!(
                            "{}: error: {e} (use an address inside the pool, or none to get one from it)",
                            spec.source
                        );
                    }
                }
            }
            let errors = loaded.errors().count() + pool_errors;
            if errors == 0 {
                println!(
                    "{}: {} unikernel(s) declared, configuration OK",
                    dir.display(),
                    loaded.specs.len()
                );
                Ok(exit::OK)
            } else {
                println!(
                    "{}: {errors} error(s) in {} file(s)",
                    dir.display(),
                    loaded.failed_files.len().max(1)
                );
                Ok(exit::FAILED)
            }
        }
        Command::Plan { dir, offline, json } => {
            if dir.is_none() && !offline {
                let conn = connect().await?;
                let entries = manager(&conn).await?.plan().await.map_err(bus_error)?;
                print_plan(&entries, json);
                return Ok(exit::OK);
            }
            let dir = dir.unwrap_or_else(|| DEFAULT_CONFIG_DIR.into());
            let mut loader = Loader::default();
            let loaded = loader.load_dir(&dir);
            // As in `check`: left to the process's end.
            std::mem::forget(loader);
            report(&loaded);
            let mut running = BTreeMap::new();
            if !offline {
                // DIR against what the daemon runs: its spec hashes say what would change.
                let conn = connect()
                    .await
                    .map_err(|f| Failure(f.0, format!("{} (use --offline to plan against nothing)", f.1)))?;
                let m = manager(&conn).await?;
                for (name, ..) in m.list_unikernels().await.map_err(bus_error)? {
                    let hash = unikernel(&conn, &name).await?.spec_hash().await.map_err(bus_error)?;
                    running.insert(
                        name,
                        Observed {
                            spec_hash: hash,
                            spec: None,
                        },
                    );
                }
            }
            let p = plan(&loaded.specs, &running);
            if json {
                print_plan(&unikerneld::dbus::manager::plan_entries(&p), true);
            } else {
                // The local plan knows where each declaration is: show it.
                println!("{p}");
            }
            Ok(if loaded.errors().count() > 0 {
                exit::FAILED
            } else {
                exit::OK
            })
        }
        Command::List { json } => {
            let conn = connect().await?;
            let list = manager(&conn).await?.list_unikernels().await.map_err(bus_error)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(n, s, a, p, o)| json!({"name": n, "state": s, "address": a, "pid": p, "object": o.as_str()}))
                    .collect();
                let v = serde_json::Value::Array(v);
                println!("{v:#}");
            } else {
                println!("{:<24} {:<9} {:<16} {:>8}", "NAME", "STATE", "ADDRESS", "PID");
                for (n, s, a, p, _) in &list {
                    let pid = if *p == 0 { "-".to_string() } else { p.to_string() };
                    let a = if a.is_empty() { "-" } else { a };
                    println!("{n:<24} {s:<9} {a:<16} {pid:>8}");
                }
                println!("\n{} unikernel(s) listed.", list.len());
            }
            Ok(exit::OK)
        }
        Command::Status { name: None, json, .. } => {
            let conn = connect().await?;
            let m = manager(&conn).await?;
            let summary = m.summary().await.map_err(bus_error)?;
            let errors = m.declaration_errors().await.map_err(bus_error)?;
            let dir = m.config_dir().await.map_err(bus_error)?;
            let version = m.version().await.map_err(bus_error)?;
            let (commit, time, subject, dirty) = m.applied_revision().await.map_err(bus_error)?;
            let (failed, failed_subject, failed_errors) = m.failed_revision().await.map_err(bus_error)?;
            let fetch_error = m.fetch_error().await.map_err(bus_error)?;
            if json {
                let errs: Vec<_> = errors
                    .iter()
                    .map(|(f, l, c, msg)| json!({"file": f, "line": l, "column": c, "message": msg}))
                    .collect();
                let applied = (!commit.is_empty())
                    .then(|| json!({"commit": commit, "time": time, "subject": subject, "dirty": dirty}));
                let refused = (!failed.is_empty())
                    .then(|| json!({"commit": failed, "subject": failed_subject, "errors": failed_errors}));
                let v = json!({"version": version, "config_dir": dir, "summary": summary, "declaration_errors": errs,
                    "applied_revision": applied, "failed_revision": refused,
                    "fetch_error": (!fetch_error.is_empty()).then_some(&fetch_error)});
                println!("{v:#}");
            } else {
                println!("● unikerneld {version}: {summary}");
                println!("  Declarations: {dir}");
                if !commit.is_empty() {
                    let short = short_id(&commit);
                    println!(
                        "      Revision: {short}{} {subject:?}",
                        if dirty { " (dirty)" } else { "" }
                    );
                }
                if !failed.is_empty() {
                    let short = short_id(&failed);
                    println!("       Refused: {short} {failed_subject:?} (nothing of it applied)");
                    for e in &failed_errors {
                        println!("         {e}");
                    }
                }
                if !fetch_error.is_empty() {
                    println!("   Fetch error: {fetch_error}");
                }
                for e in errors {
                    println!("  error: {}", DeclarationError::from_bus(e));
                }
            }
            Ok(exit::OK)
        }
        Command::Status {
            name: Some(name),
            lines,
            json,
        } => {
            let conn = connect().await?;
            let u = unikernel(&conn, &name).await?;
            let v = describe(&conn, &u, lines).await?;
            if json {
                println!("{v:#}");
            } else {
                print_status(&v);
            }
            // On standby counts as up (like an active socket-activated unit): it serves.
            Ok(if v["state"] == "running" || v["state"] == "standby" {
                exit::OK
            } else {
                exit::NOT_RUNNING
            })
        }
        Command::Start { name } => operate("start", &name).await,
        Command::Stop { name } => operate("stop", &name).await,
        Command::Restart { name } => operate("restart", &name).await,
        Command::Standby { name } => operate("standby", &name).await,
        Command::Wake { name } => operate("wake", &name).await,
        Command::Logs {
            name,
            lines,
            follow,
            json,
        } => {
            let conn = connect().await?;
            let u = unikernel(&conn, &name).await?;
            let print = |ls: &[String]| {
                for l in ls {
                    if json {
                        println!("{}", json!({"unikernel": name, "line": l}));
                    } else {
                        println!("{l}");
                    }
                }
            };
            let (all, mut cursor) = u.logs_since(0).await.map_err(bus_error)?;
            print(&all[all.len().saturating_sub(lines as usize)..]);
            if follow {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let (new, next) = u.logs_since(cursor).await.map_err(bus_error)?;
                    print(&new);
                    cursor = next;
                }
            }
            Ok(exit::OK)
        }
        Command::Sync => {
            let conn = connect().await?;
            let (outcome, commit, errors) = manager(&conn).await?.sync().await.map_err(bus_error)?;
            let short = short_id(&commit);
            match outcome.as_str() {
                "refused" => {
                    let mut text = format!("revision {short} refused, nothing of it applied:");
                    for e in errors {
                        text.push_str(&format!("\n  {e}"));
                    }
                    Err(Failure(exit::FAILED, text))
                }
                other => {
                    println!("{other}: revision {short}");
                    Ok(exit::OK)
                }
            }
        }
        Command::Reload => {
            let conn = connect().await?;
            let applied = manager(&conn).await?.reload().await.map_err(bus_error)?;
            print_plan(&applied, false);
            Ok(exit::OK)
        }
    }
}

/// start / stop / restart / standby / wake: one method call on the unikernel's object.
async fn operate(verb: &str, name: &str) -> Result<u8> {
    let conn = connect().await?;
    let u = unikernel(&conn, name).await?;
    match verb {
        "start" => u.start().await,
        "stop" => u.stop().await,
        "standby" => u.standby().await,
        "wake" => u.wake().await,
        _ => u.restart().await,
    }
    .map_err(bus_error)?;
    Ok(exit::OK)
}

fn main() -> ExitCode {
    // Like every Unix filter: `unikernelctl status | head` ends quietly when head does,
    // instead of panicking on EPIPE (Rust ignores SIGPIPE by default).
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    unikerneld::panic::abort_on_panic();
    let cli = Cli::parse();
    let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run(cli.command)),
        Err(e) => Err(Failure(exit::FAILED, format!("cannot start: {e}"))),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            eprintln!("unikernelctl: {msg}");
            ExitCode::from(code)
        }
    }
}
