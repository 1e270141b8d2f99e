//! Guides: longer explanations than an item's docs can hold.

#[doc = include_str!("labels.md")]
pub mod labels {}

#[doc = include_str!("inflicted.md")]
pub mod inflicted {}

#[cfg(feature = "watchdog")]
#[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
#[doc = include_str!("watchdog.md")]
pub mod watchdog {}
