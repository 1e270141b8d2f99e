//! Renderers: plain functions from a [`Report`](crate::Report) to text in one format each.

pub(crate) mod html;
pub(crate) mod text;
