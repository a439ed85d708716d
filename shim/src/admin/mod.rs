//! Administering a host: `hull check` (can this host run Hull, and how) and
//! `hull install` (put a built tree in place and register it with
//! containerd). See docs/install.md.

pub mod check;
pub mod containerd_config;
pub mod install;
