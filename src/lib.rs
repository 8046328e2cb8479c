//! tidekeeper: a GitOps reconciler for fleets of plain Linux servers.
//!
//! The modules follow the data flow of a reconcile:
//!
//! - [`source`]: the config repo at one commit, read from git (never a work tree).
//! - [`model`]: YAML → checked, resolved desired state, or located diagnostics.
//! - [`schedule`]: cron, time zones and maintenance windows (pure).
//! - [`cli`]: the `tidekeeper` command.

pub mod badge;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod forge;
pub mod maintenance;
pub mod model;
pub mod policy;
pub mod report;
pub mod schedule;
pub mod secrets;
pub mod source;
pub mod transport;
