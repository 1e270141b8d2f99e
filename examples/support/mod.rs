//! Code shared by the examples: `mod support;` in an example brings in all of it.
//!
//! - [`documents`]: the deterministic JSON documents (also used by `benches/json.rs`);
//! - [`load`]: the in-process load driver (`ab -n N -c C`) and the canary client;
//! - [`table`]: aligned text tables for the results.
//!
//! This folder is not an example of its own: cargo only builds `examples/*.rs` and
//! `examples/*/main.rs`.

pub mod documents;
pub mod load;
pub mod table;
