//! The few rtnetlink requests the agent makes, on the `rtnetlink` crate.
//! Written by hand: reading the kernel's extended acknowledgement (its
//! words on why it refused), which the crate keeps as raw bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_core::{ErrorMessage, NlasIterator};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::config::{IpNet, RouteConfig};

/// Length of the request's `nlmsghdr` that a capped acknowledgement echoes
/// before its attributes.
const ECHOED_HEADER_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the kernel's error message, a C string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Why a netlink request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused: its errno and, where it gave one, its message.
    #[error("{}", refusal(*errno, message.as_deref()))]
    Refused { errno: i32, message: Option<String> },
    #[error("{0}")]
    Protocol(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { errno, .. } => Some(*errno),
            NetlinkError::Protocol(_) => None,
        }
    }
}

/// A route message the crate's builder refused to build.
fn invalid(error: impl fmt::Display) -> NetlinkError {
    NetlinkError::Protocol(error.to_string())
}

fn refusal(errno: i32, message: Option<&str>) -> String {
    let reason = std::io::Error::from_raw_os_error(errno);
    match message {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_string(),
    }
}

/// The kernel's message in an extended acknowledgement, when the socket
/// asked for capped acknowledgements (so only the request's header is
/// echoed before the attributes).
fn kernel_message(error: &ErrorMessage) -> Option<String> {
    let attributes = error.header.get(ECHOED_HEADER_LEN..)?;
    NlasIterator::new(attributes)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
        .filter(|message| !message.is_empty())
}

/// A link as the kernel lists it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
}

impl Link {
    fn from_message(message: LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mac: Vec::new(),
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(mac) => link.mac = mac,
                _ => {}
            }
        }
        link
    }
}

/// One rtnetlink socket, served by a task that ends when this is dropped.
pub struct Netlink {
    handle: Handle,
    /// Whether refusals carry the kernel's message (see `kernel_message`).
    extended_acks: bool,
}

impl Netlink {
    pub fn connect() -> std::io::Result<Netlink> {
        let (mut connection, handle, _) = rtnetlink::new_connection()?;
        let socket = connection.socket_mut().socket_mut();
        let extended_acks = socket.set_cap_ack(true).is_ok() && socket.set_ext_ack(true).is_ok();
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            extended_acks,
        })
    }

    fn error(&self, error: rtnetlink::Error) -> NetlinkError {
        match error {
            rtnetlink::Error::NetlinkError(message) => NetlinkError::Refused {
                errno: message.raw_code().abs(),
                message: self
                    .extended_acks
                    .then(|| kernel_message(&message))
                    .flatten(),
            },
            other => NetlinkError::Protocol(other.to_string()),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        Ok(messages.into_iter().map(Link::from_message).collect())
    }

    /// RTM_SETLINK with a message from `rtnetlink::LinkUnspec`.
    pub async fn set_link(&self, message: LinkMessage) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| self.error(e))
    }

    /// Every address of the link, IPv4 and IPv6.
    pub async fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error(e))
    }

    pub async fn delete_address(&self, address: AddressMessage) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .del(address)
            .execute()
            .await
            .map_err(|e| self.error(e))
    }

    /// Adds the address, or updates it if the link has it already. IPv6
    /// addresses skip duplicate address detection: the address is the pod's
    /// and unique already, and DAD would keep it unusable ("tentative") for a
    /// second or more after the link comes up.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let mut request = self
            .handle
            .address()
            .add(index, net.address, net.prefix_length)
            .replace();
        if net.address.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.map_err(|e| self.error(e))
    }

    /// Every route of the family, in every table.
    pub async fn routes(&self, ipv4: bool) -> Result<Vec<RouteMessage>, NetlinkError> {
        let filter = if ipv4 {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        self.handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error(e))
    }

    /// Deletes a route as listed by `routes`. Only the attributes that
    /// identify it are sent back; the rest (cache info, expiry) are state.
    pub async fn delete_route(&self, mut route: RouteMessage) -> Result<(), NetlinkError> {
        route.attributes.retain(|attribute| {
            matches!(
                attribute,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Source(_)
                    | RouteAttribute::Gateway(_)
                    | RouteAttribute::PrefSource(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Table(_)
            )
        });
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(|e| self.error(e))
    }

    /// Adds the route to the main table, or replaces the route with the
    /// same destination and metric (such as the kernel's prefix route of an
    /// address, when the request repeats it).
    pub async fn add_route(&self, route: &RouteConfig, device: u32) -> Result<(), NetlinkError> {
        let mut message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.destination.address, route.destination.prefix_length)
            .map_err(invalid)?
            .output_interface(device)
            .scope(RouteScope::from(route.scope));
        if let Some(gateway) = route.gateway {
            message = message.gateway(gateway).map_err(invalid)?;
        }
        if let Some(source) = route.source {
            message = message.pref_source(source).map_err(invalid)?;
        }
        self.handle
            .route()
            .add(message.build())
            .replace()
            .execute()
            .await
            .map_err(|e| self.error(e))
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.name)?;
        for (i, byte) in self.mac.iter().enumerate() {
            if i > 0 {
                write!(f, ":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroI32;

    /// An NLMSG_ERROR payload after the error code, as the kernel writes it
    /// for a capped, extended acknowledgement.
    fn capped_ack(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0u8; ECHOED_HEADER_LEN];
        bytes[..4].copy_from_slice(&(ECHOED_HEADER_LEN as u32 + 12).to_ne_bytes());
        for (kind, value) in attributes {
            let length = 4 + value.len();
            bytes.extend_from_slice(&(length as u16).to_ne_bytes());
            bytes.extend_from_slice(&kind.to_ne_bytes());
            bytes.extend_from_slice(value);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        bytes
    }

    fn error_message(header: Vec<u8>) -> ErrorMessage {
        let mut message = ErrorMessage::default();
        message.code = NonZeroI32::new(-libc::ENETUNREACH);
        message.header = header;
        message
    }

    #[test]
    fn the_kernels_message_is_read_from_an_extended_ack() {
        // NLMSGERR_ATTR_OFFS (2) first, then the message.
        let header = capped_ack(&[
            (2, &28u32.to_ne_bytes()),
            (NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0"),
        ]);
        assert_eq!(
            kernel_message(&error_message(header)).as_deref(),
            Some("Nexthop has invalid gateway")
        );
    }

    #[test]
    fn an_ack_without_a_message_has_none() {
        assert_eq!(kernel_message(&error_message(capped_ack(&[]))), None);
        assert_eq!(kernel_message(&error_message(vec![0; 4])), None);
        let truncated = {
            let mut bytes = capped_ack(&[]);
            bytes.extend_from_slice(&[200, 0, 1, 0, b'x']);
            bytes
        };
        assert_eq!(kernel_message(&error_message(truncated)), None);
    }

    #[test]
    fn refusals_read_errno_then_the_kernels_words() {
        let refused = NetlinkError::Refused {
            errno: libc::ENETUNREACH,
            message: Some("Nexthop has invalid gateway".into()),
        };
        let text = refused.to_string();
        assert!(text.starts_with("Network is unreachable"), "{text}");
        assert!(text.ends_with(": Nexthop has invalid gateway"), "{text}");
        let bare = NetlinkError::Refused {
            errno: libc::EEXIST,
            message: None,
        };
        assert!(bare.to_string().starts_with("File exists"), "{bare}");
        assert_eq!(bare.errno(), Some(libc::EEXIST));
    }
}
