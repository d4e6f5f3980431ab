//! The policy language: `routes.toml` rules, their vocabulary and the compiled table.
//!
//! - [`vocab`]: every predicate, response filter and upstream capability, each with one
//!   descriptor; a leaf that imports nothing else from the crate.
//! - [`table`]: parsing, validation and compilation into matchit routers.

pub mod table;
pub mod vocab;

pub use table::*;
