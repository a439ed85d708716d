//! The Hull agent API, `hull.agent.v1`: the only contract between the host
//! side (shim, `hull run`) and `hull-agent` in the guest.
//!
//! Messages and the ttrpc service are generated at build time from
//! `proto/agent.proto`. Stdio and port forwarding are not part of this API; see [`stdio`] and
//! [`forward`].

#[allow(warnings, clippy::all)]
#[rustfmt::skip]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

#[allow(warnings, clippy::all)]
#[rustfmt::skip]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub mod forward;
pub mod stdio;

pub use agent::ApiVersion;

/// vsock port on which the agent serves the ttrpc API.
pub const AGENT_API_PORT: u32 = 1024;
/// vsock port on which the agent accepts stdio streams.
pub const AGENT_STDIO_PORT: u32 = 1025;
/// Host vsock port the agent connects to once it serves: the host waits for
/// that instead of retrying connections through the boot.
pub const AGENT_READY_PORT: u32 = 1027;
/// vsock port on which the agent accepts forwarded TCP connections
/// (`kubectl port-forward`); see [`forward`].
pub const AGENT_FORWARD_PORT: u32 = 1026;
/// The API version this crate speaks.
pub const API_VERSION: ApiVersion = ApiVersion::API_VERSION_V1;
