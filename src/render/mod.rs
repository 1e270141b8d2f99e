//! Renderers: plain functions from a [`Report`](crate::Report) to text in one format each.

#[cfg(feature = "watchdog")]
pub(crate) mod flamegraph;
pub(crate) mod html;
pub(crate) mod prometheus;
pub(crate) mod text;
