//! Bridges into the metrics systems an application already runs: each publishes the figures of
//! a [`Report`](crate::Report) (per label, so with the report's cardinality bound,
//! `max_labels`), off every hot path, from a snapshot taken when the bridge asks for it.

#[cfg(feature = "metrics")]
pub(crate) mod metrics;
#[cfg(feature = "opentelemetry")]
pub(crate) mod opentelemetry;
