//! unikerneld: the host daemon. Today: host networking for VMs (`net`); the declarations,
//! reconcile loop, D-Bus API and CLI come with the next issues.
pub mod decl;
pub mod net;
pub mod plan;
