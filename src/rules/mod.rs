//! The policy language: `routes.toml` rules, their vocabulary and the compiled table.
//!
//! - [`vocab`]: every predicate, response filter and upstream capability, each with one
//!   descriptor; a leaf that imports nothing else from the crate.
//! - [`table`]: parsing, validation and compilation into matchit routers.
//! - [`groups`]: the caller groups `caller.in` admits (an operator's file, bound at compile time).
//! - [`access`]: that file's model access and quota sections (bound into the table with it).

pub mod access;
pub mod groups;
pub mod table;
pub mod vocab;

pub use groups::Groups;
pub use table::*;
