//! Declarations: `*.kdl` files -> typed [`Spec`]s, with diagnostics that say where
//! (file:line:col), what, and how to fix it. Loading is per file: a file that fails keeps
//! its last good specs (see [`load::Loader`]).
pub mod diagnostic;
pub mod fast;
pub mod guard;
pub mod limits;
pub mod load;
pub mod merge;
pub mod parse;
pub mod reader;
pub mod spec;
pub mod standby;
pub mod template;

pub use diagnostic::DeclError;
pub use limits::LimitsSpec;
pub use load::{Loaded, Loader};
pub use spec::{Connections as ConnectionLimits, Expose, NetSpec, RestartPolicy, Source, Spec};
pub use standby::{Connections, StandbySpec};
