//! The host side of Hull: the `hull` command and (soon) the containerd shim.
//!
//! Layers, top to bottom: commands (`run`) → sandbox (one VM and what it
//! needs: state dir, rootfs share, virtiofsd, vsock backend) → hypervisor
//! (the `Hypervisor` trait and its QEMU backend) and agent client (ttrpc and
//! stdio streams over hybrid vsock).

pub mod admin;
pub mod agent_client;
pub mod bench;
pub mod config;
pub mod guest_text;
pub mod host;
pub mod hypervisor;
pub mod ids;
pub mod manager;
pub mod network;
pub mod pod;
pub mod pool;
pub mod port_forward;
pub mod rootfs;
pub mod run;
pub mod sandbox;
pub mod spec;
pub mod sys;
pub mod task;
pub mod watch;
