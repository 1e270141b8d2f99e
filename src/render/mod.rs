//! Renderers: plain functions from a [`Report`](crate::Report) to text in one format each.

pub(crate) mod text;
