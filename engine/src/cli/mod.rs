//! Command-line definitions of the two programs, shared by the binaries and by the
//! generator of their man pages and shell completions (`xtask`).
pub mod unikernelctl;
pub mod unikerneld;
