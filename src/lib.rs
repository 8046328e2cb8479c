//! tidekeeper: a GitOps reconciler for fleets of plain Linux servers.
//!
//! The modules follow the data flow of a reconcile:
//!
//! - [`source`]: the config repo at one commit, read from git (never a work tree).
//! - [`model`]: YAML → checked, resolved desired state, or located diagnostics.
//! - [`schedule`]: cron, time zones and maintenance windows (pure).
//! - [`transport`]: SSH (russh) or local, running one script at a time.
//! - [`engine`]: a host observed in one round trip, planned (pure), applied.
//! - [`cloud`]: Hetzner and Lightsail servers: observed, planned with costs, applied.
//! - [`reconcile`]: a whole reconcile, cloud stage then hosts.
//! - [`policy`]: every plan judged by Rego policies.
//! - [`daemon`], [`report`], [`forge`]: the long-running loop and what it writes back.
//! - [`audit`]: the audit trail at the end of each note on a reconciled commit (pure).
//! - [`saved_plan`]: a plan saved to a file, applied only while it is what a fresh plan says.
//! - [`backoff`]: the one retry backoff (exponential, jittered), for every stage.
//! - [`state_file`]: the daemon's state directory, written atomically, never dropped unseen.
//! - [`cli`]: the `tidekeeper` command.

#![warn(unreachable_pub)]

pub mod audit;
pub(crate) mod backoff;
pub mod badge;
pub mod change;
pub mod cli;
pub mod clock;
pub mod cloud;
pub(crate) mod codeowners;
pub mod daemon;
pub mod digest;
pub mod engine;
pub mod forge;
pub mod http;
pub mod maintenance;
pub mod model;
pub mod notify;
pub mod policy;
pub mod proposal;
pub mod reconcile;
pub mod report;
pub mod saved_plan;
pub mod schedule;
pub mod secrets;
pub mod source;
pub mod state_file;
pub mod suggest;
pub mod transport;
