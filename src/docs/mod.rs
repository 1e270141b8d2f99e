//! Guides: longer explanations than an item's docs can hold.

#[doc = include_str!("labels.md")]
pub mod labels {}
