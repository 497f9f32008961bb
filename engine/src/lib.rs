//! unikerneld: the host daemon. Declarations (`decl`) are planned against what runs
//! (`plan`) and converged by the control loop (`reconcile`), which supervises one
//! `unikernel-vmm` process per service (`supervise`) on host networking it sets up
//! through netlink (`net`), exposes host ports (`proxy`), keeps runtime state for
//! adoption (`state_dir`) and reports honest status (`status`, `systemd`).
pub mod dbus;
pub mod decl;
pub mod net;
pub mod plan;
pub mod proxy;
pub mod reconcile;
pub mod state_dir;
pub mod status;
pub mod supervise;
pub mod systemd;
pub mod watch;
