//! The port-forward header.
//!
//! `kubectl port-forward` reaches a pod through containerd, which dials
//! `localhost:PORT` in the pod's network namespace on the host. In a Hull pod
//! the shim answers there and carries each connection to the agent's
//! forward port on its own vsock connection, which starts with one line:
//!
//! ```text
//! HULL-FORWARD/1 <tcp4|tcp6> <port>\n
//! ```
//!
//! The agent connects to that port on the guest's loopback address (the
//! guest's network is the pod's) and answers `OK\n`, or `ERR <reason>\n` and
//! closes (the answers of [`crate::stdio`]). After `OK` the connection
//! carries the TCP stream's bytes both ways.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: &str = "HULL-FORWARD/1";
/// Longest header line accepted, newline included.
pub const MAX_HEADER_LEN: usize = 64;

/// The loopback address family a forwarded connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Tcp4,
    Tcp6,
}

/// The header line of a forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHeader {
    pub family: Family,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid port-forward header {0:?}: expected `{MAGIC} <tcp4|tcp6> <port>`")]
pub struct ForwardHeaderError(pub String);

impl ForwardHeader {
    /// The guest address the agent connects to.
    pub fn target(&self) -> SocketAddr {
        let ip = match self.family {
            Family::Tcp4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::Tcp6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, self.port)
    }

    pub fn parse(line: &str) -> Result<Self, ForwardHeaderError> {
        let invalid = || ForwardHeaderError(line.chars().take(MAX_HEADER_LEN).collect());
        let body = line.strip_suffix('\n').ok_or_else(invalid)?;
        let mut words = body.split(' ');
        let (Some(MAGIC), Some(family), Some(port), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(invalid());
        };
        let family = match family {
            "tcp4" => Family::Tcp4,
            "tcp6" => Family::Tcp6,
            _ => return Err(invalid()),
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(ForwardHeader { family, port }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for ForwardHeader {
    /// The header line, newline included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match self.family {
            Family::Tcp4 => "tcp4",
            Family::Tcp6 => "tcp6",
        };
        writeln!(f, "{MAGIC} {family} {}", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        for header in [
            ForwardHeader {
                family: Family::Tcp4,
                port: 8080,
            },
            ForwardHeader {
                family: Family::Tcp6,
                port: 65535,
            },
        ] {
            let line = header.to_string();
            assert!(line.len() <= MAX_HEADER_LEN);
            assert_eq!(ForwardHeader::parse(&line), Ok(header));
        }
        assert_eq!(
            ForwardHeader::parse("HULL-FORWARD/1 tcp6 22\n")
                .unwrap()
                .target(),
            "[::1]:22".parse().unwrap()
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for line in [
            "HULL-FORWARD/1 tcp4 8080",
            "HULL-FORWARD/1 tcp4 0\n",
            "HULL-FORWARD/1 tcp4 65536\n",
            "HULL-FORWARD/1 tcp4 +80\n",
            "HULL-FORWARD/1 udp 53\n",
            "HULL-FORWARD/1 tcp4 80 x\n",
            "HULL-FORWARD/1  tcp4 80\n",
            "HULL-STDIO/1 tcp4 80\n",
            "\n",
        ] {
            assert!(ForwardHeader::parse(line).is_err(), "{line:?}");
        }
    }
}
