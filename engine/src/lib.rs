//! unikerneld: the host daemon. Declarations (`decl`) are planned against what runs
//! (`plan`) and converged by the `controller`, which supervises one `unikernel-vmm`
//! process per service (`supervise`) on host networking it sets up through netlink
//! (`net`), exposes host ports (`proxy`), keeps runtime state for adoption (`state_dir`)
//! and reports honest status (`status`, `systemd`, `dbus`). `daemon` is the control loop
//! that ties them to inotify, signals, D-Bus and systemd.
pub mod cli;
pub mod controller;
pub mod daemon;
pub mod dbus;
pub mod decl;
pub mod metrics;
pub mod net;
pub mod panic;
pub mod plan;
pub mod proxy;
pub mod single_flight;
pub mod source;
pub mod state_dir;
pub mod status;
pub mod status_file;
pub mod steps;
pub mod supervise;
pub mod systemd;
pub mod watch;
