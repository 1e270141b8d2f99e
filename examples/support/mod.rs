//! Code shared by the examples: `mod support;` in an example brings in all of it.
//!
//! - [`documents`]: the deterministic JSON documents (also used by `benches/json.rs`);
//! - [`load`]: the in-process load driver (`ab -n N -c C`) and the canary client;
//! - [`table`]: aligned text tables for the results;
//! - [`json_app`]: the JSON service of `json_service.rs` (its routes and cache);
//! - [`scoring_app`]: the scoring and model services of `scoring.rs`.
//!
//! `tests/examples.rs` includes this folder too, to test the services the examples run.
//!
//! This folder is not an example of its own: cargo only builds `examples/*.rs` and
//! `examples/*/main.rs`.

pub mod documents;
pub mod json_app;
pub mod load;
pub mod scoring_app;
pub mod table;
