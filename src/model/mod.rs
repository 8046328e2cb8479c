//! Model: the config repo parsed, checked and resolved into desired state.
//!
//! Two stages, as with command-line arguments: [`raw`] mirrors the YAML files
//! (unknown keys rejected, every value with its location), and [`resolve`]
//! turns that into a [`desired::Fleet`] — roles merged into hosts, templates
//! rendered, defaults applied — or into [`diag::Diagnostics`] naming every
//! problem by file, line and column. Pure: the input is an in-memory
//! [`crate::source::ConfigTree`]. [`render_with`] renders a loaded fleet
//! again with the [`AddressBook`] the cloud stage learned.

pub(crate) mod check;
pub mod desired;
pub(crate) mod diag;
pub mod facts;
pub(crate) mod lockout;
pub(crate) mod notify;
pub mod raw;
pub(crate) mod resolve;
pub(crate) mod schema;
pub mod select;

pub use desired::Fleet;
pub use desired::{AddressBook, Addresses};
pub use diag::{Diagnostic, Diagnostics, Origin};
pub use facts::Facts;
pub use resolve::{
    assign_addresses, load, load_before_the_first_host, load_with_identity, load_within,
    render_with, render_with_facts,
};
