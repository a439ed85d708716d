//! The guest's network, over rtnetlink: the pod's NIC (UpdateInterface),
//! its routes (UpdateRoutes) and `lo`. Everything happens in the network
//! namespace the agent runs in, the guest's root one, which every container
//! of the pod shares. A host-mode agent changes the namespace it was started
//! in: its tests start it in a throwaway one.
//!
//! `config` checks a request before anything is changed; `netlink` speaks to
//! the kernel.

mod config;
mod netlink;

use std::collections::BTreeMap;
use std::net::IpAddr;

use hull_protocols::agent::{UpdateInterfaceRequest, UpdateRoutesRequest};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::LinkUnspec;

pub use self::config::InvalidField;
use self::config::{install_order, InterfaceConfig, IpNet, MacAddress, RouteConfig};
use self::netlink::{Link, Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    #[error("no link has MAC address {mac}; links: {links}")]
    NoLinkWithMac { mac: MacAddress, links: String },
    #[error("MAC address {mac} is on more than one link: {links}")]
    AmbiguousMac { mac: MacAddress, links: String },
    #[error("device {device} of route {route} not found; links: {links}")]
    NoSuchDevice {
        device: String,
        route: String,
        links: String,
    },
    /// The kernel refused (or the exchange with it failed).
    #[error("{action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: NetlinkError,
    },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
}

impl NetworkError {
    /// Whether the kernel refused, as opposed to the request being malformed
    /// or naming something absent.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            NetworkError::Netlink {
                source: NetlinkError::Refused { .. },
                ..
            }
        )
    }
}

type Result<T> = std::result::Result<T, NetworkError>;

fn failed(action: impl Into<String>) -> impl FnOnce(NetlinkError) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Netlink { action, source }
}

/// Whether a netlink error says the thing to delete was already gone.
fn already_gone(error: &NetlinkError) -> bool {
    matches!(
        error.errno(),
        Some(libc::ESRCH | libc::EADDRNOTAVAIL | libc::ENOENT)
    )
}

fn list(links: &[Link]) -> String {
    links
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies network requests one at a time: two of them interleaved could
/// leave a mix of both.
#[derive(Default)]
pub struct GuestNetwork {
    busy: tokio::sync::Mutex<()>,
}

impl GuestNetwork {
    /// Finds the link by its MAC address (or, when no link has it, by name,
    /// and gives it the address: a VM booted ahead of its pod has a NIC
    /// with a MAC of its own) and makes it the requested interface: down,
    /// renamed, its MTU, exactly the requested addresses
    /// (the kernel's IPv6 link-local address stays), up. Taking it down
    /// drops its routes, so UpdateRoutes comes after.
    pub async fn update_interface(&self, request: &UpdateInterfaceRequest) -> Result<()> {
        let interface = request.interface.as_ref().ok_or_else(|| InvalidField {
            field: "interface".into(),
            reason: "missing".into(),
        })?;
        let config = InterfaceConfig::from_request(interface)?;
        let _one_at_a_time = self.busy.lock().await;
        let netlink = Netlink::connect().map_err(NetworkError::Socket)?;
        let links = netlink.links().await.map_err(failed("listing links"))?;
        let (link, new_mac) = link_for(&links, &config.name, config.mac)?;
        let index = link.index;

        netlink
            .set_link(LinkUnspec::new_with_index(index).down().build())
            .await
            .map_err(failed(format!("taking {} down", link.name)))?;
        if new_mac {
            netlink
                .set_link(
                    LinkUnspec::new_with_index(index)
                        .address(config.mac.0.to_vec())
                        .build(),
                )
                .await
                .map_err(failed(format!(
                    "giving {} the MAC {}",
                    link.name, config.mac
                )))?;
        }
        if link.name != config.name {
            netlink
                .set_link(
                    LinkUnspec::new_with_index(index)
                        .name(config.name.clone())
                        .build(),
                )
                .await
                .map_err(failed(format!("renaming {} to {}", link.name, config.name)))?;
        }
        let name = &config.name;
        if let Some(mtu) = config.mtu {
            netlink
                .set_link(LinkUnspec::new_with_index(index).mtu(mtu).build())
                .await
                .map_err(failed(format!("setting the MTU of {name} to {mtu}")))?;
        }

        let present = netlink
            .addresses(index)
            .await
            .map_err(failed(format!("listing the addresses of {name}")))?;
        for address in present {
            if keeps_address(&address, &config.addresses) {
                continue;
            }
            let shown = address_text(&address);
            // Removing a primary IPv4 address removes its secondaries too.
            if let Err(error) = netlink.delete_address(address).await {
                if !already_gone(&error) {
                    return Err(failed(format!("removing {shown} from {name}"))(error));
                }
            }
        }
        for &address in &config.addresses {
            netlink
                .add_address(index, address)
                .await
                .map_err(failed(format!("adding {address} to {name}")))?;
        }

        netlink
            .set_link(LinkUnspec::new_with_index(index).up().build())
            .await
            .map_err(failed(format!("bringing {name} up")))?;
        tracing::info!(
            interface = %name,
            mac = %config.mac,
            mtu = ?config.mtu,
            addresses = ?config.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "interface updated"
        );
        Ok(())
    }

    /// Replaces the routes of every device the request names with the
    /// request's routes. Routes the kernel made (prefix routes of addresses,
    /// IPv6 link-local) stay; devices the request does not name are left
    /// alone.
    pub async fn update_routes(&self, request: &UpdateRoutesRequest) -> Result<()> {
        let routes = request
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| RouteConfig::from_request(i, route))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let _one_at_a_time = self.busy.lock().await;
        let netlink = Netlink::connect().map_err(NetworkError::Socket)?;
        let links = netlink.links().await.map_err(failed("listing links"))?;
        // Every device is looked up before anything changes.
        let mut by_name = BTreeMap::new();
        for route in &routes {
            let link = links
                .iter()
                .find(|link| link.name == route.device)
                .ok_or_else(|| no_such_device(route, &links))?;
            by_name.insert(link.name.as_str(), link.index);
        }
        let devices: BTreeMap<u32, &str> = by_name
            .iter()
            .map(|(&name, &index)| (index, name))
            .collect();

        for ipv4 in [true, false] {
            let family = if ipv4 { "IPv4" } else { "IPv6" };
            let present = netlink
                .routes(ipv4)
                .await
                .map_err(failed(format!("listing the {family} routes")))?;
            for route in present {
                let Some(device) = replaced_route_device(&route, &devices) else {
                    continue;
                };
                let shown = format!("{} dev {device}", route_destination(&route));
                if let Err(error) = netlink.delete_route(route).await {
                    if !already_gone(&error) {
                        return Err(failed(format!("removing the route {shown}"))(error));
                    }
                }
            }
        }

        let count = routes.len();
        for route in install_order(routes) {
            let device = *by_name
                .get(route.device.as_str())
                .ok_or_else(|| no_such_device(&route, &links))?;
            netlink
                .add_route(&route, device)
                .await
                .map_err(failed(format!("adding the route {route}")))?;
        }
        tracing::info!(
            routes = count,
            devices = ?devices.values().collect::<Vec<_>>(),
            "routes updated"
        );
        Ok(())
    }
}

/// Brings up `lo`, which a new network namespace starts without; a no-op
/// where it is up. Two ioctls on a datagram socket, not an rtnetlink
/// exchange: this runs on every boot before the agent serves, and under
/// emulation the rtnetlink path (a connection task, a dump of the links)
/// took 35 ms of the time to the agent's first answer.
pub fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq the pointer
    // names, which outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the flags are the union member SIOCGIFFLAGS set.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq the pointer names.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn no_such_device(route: &RouteConfig, links: &[Link]) -> NetworkError {
    NetworkError::NoSuchDevice {
        device: route.device.clone(),
        route: route.to_string(),
        links: list(links),
    }
}

/// The link to configure, and whether it must take the MAC: the one with
/// the MAC, else the one with the name.
fn link_for<'a>(links: &'a [Link], name: &str, mac: MacAddress) -> Result<(&'a Link, bool)> {
    match link_with_mac(links, mac) {
        Ok(link) => Ok((link, false)),
        Err(err @ NetworkError::NoLinkWithMac { .. }) => links
            .iter()
            .find(|l| l.name == name)
            .map(|link| (link, true))
            .ok_or(err),
        Err(err) => Err(err),
    }
}

fn link_with_mac(links: &[Link], mac: MacAddress) -> Result<&Link> {
    let matching: Vec<&Link> = links.iter().filter(|link| link.mac == mac.0).collect();
    match matching.as_slice() {
        [link] => Ok(link),
        [] => Err(NetworkError::NoLinkWithMac {
            mac,
            links: list(links),
        }),
        several => Err(NetworkError::AmbiguousMac {
            mac,
            links: several
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The interface address of an address message: IFA_LOCAL where there is
/// one (IPv4; on a point-to-point link IFA_ADDRESS is the peer), else
/// IFA_ADDRESS.
fn interface_address(address: &AddressMessage) -> Option<IpAddr> {
    let mut found = None;
    for attribute in &address.attributes {
        match attribute {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => found = Some(*ip),
            _ => {}
        }
    }
    found
}

fn address_text(address: &AddressMessage) -> String {
    match interface_address(address) {
        Some(ip) => format!("{ip}/{}", address.header.prefix_len),
        None => format!(
            "an address with no IP (prefix {})",
            address.header.prefix_len
        ),
    }
}

fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Whether an address the link has stays: it was asked for, or it is the
/// IPv6 link-local address that neighbour discovery needs.
fn keeps_address(address: &AddressMessage, wanted: &[IpNet]) -> bool {
    let Some(ip) = interface_address(address) else {
        return false;
    };
    is_ipv6_link_local(ip)
        || wanted.contains(&IpNet {
            address: ip,
            prefix_length: address.header.prefix_len,
        })
}

fn route_destination(route: &RouteMessage) -> String {
    let destination = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        });
    match destination {
        Some(ip) => format!("{ip}/{}", route.header.destination_prefix_length),
        None => "default".into(),
    }
}

/// The device of a route that UpdateRoutes replaces: in the main table,
/// through one of `devices`, not made by the kernel, not IPv6 link-local.
fn replaced_route_device<'a>(
    route: &RouteMessage,
    devices: &BTreeMap<u32, &'a str>,
) -> Option<&'a str> {
    let table = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || route.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let link_local = route.attributes.iter().any(|attribute| {
        matches!(attribute, RouteAttribute::Destination(RouteAddress::Inet6(ip)) if is_ipv6_link_local(IpAddr::V6(*ip)))
    });
    if link_local {
        return None;
    }
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Oif(index) => devices.get(index).copied(),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::AddressFamily;

    fn address(ip: &str, prefix_len: u8) -> AddressMessage {
        let ip: IpAddr = ip.parse().unwrap();
        let mut message = AddressMessage::default();
        message.header.prefix_len = prefix_len;
        message.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        message.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            message.attributes.push(AddressAttribute::Local(ip));
        }
        message
    }

    fn net(ip: &str, prefix_length: u8) -> IpNet {
        IpNet {
            address: ip.parse().unwrap(),
            prefix_length,
        }
    }

    #[test]
    fn only_requested_and_link_local_addresses_stay() {
        let wanted = [net("10.88.0.5", 16), net("fd00:88::5", 64)];
        assert!(keeps_address(&address("10.88.0.5", 16), &wanted));
        assert!(keeps_address(&address("fd00:88::5", 64), &wanted));
        assert!(keeps_address(&address("fe80::42:acff:fe11:2", 64), &wanted));
        // Same address, other prefix: a different address to the kernel.
        assert!(!keeps_address(&address("10.88.0.5", 24), &wanted));
        assert!(!keeps_address(&address("10.88.0.6", 16), &wanted));
        assert!(!keeps_address(&address("fd00:88::6", 64), &wanted));
        assert!(!keeps_address(&AddressMessage::default(), &wanted));
    }

    #[test]
    fn the_local_address_names_an_ipv4_address() {
        let mut peer = address("10.0.0.1", 32);
        peer.attributes = vec![
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
        ];
        assert_eq!(address_text(&peer), "10.0.0.1/32");
    }

    fn route(
        destination: Option<(&str, u8)>,
        oif: u32,
        protocol: RouteProtocol,
        table: u8,
    ) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.table = table;
        message.header.protocol = protocol;
        if let Some((ip, length)) = destination {
            let ip: IpAddr = ip.parse().unwrap();
            message.header.destination_prefix_length = length;
            message
                .attributes
                .push(RouteAttribute::Destination(ip.into()));
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        message
    }

    #[test]
    fn replaced_routes_are_the_static_main_table_routes_of_the_named_devices() {
        let main = RouteHeader::RT_TABLE_MAIN;
        let devices = BTreeMap::from([(2, "eth0")]);
        let replaced = |r: &RouteMessage| replaced_route_device(r, &devices);
        assert_eq!(
            replaced(&route(None, 2, RouteProtocol::Static, main)),
            Some("eth0")
        );
        assert_eq!(
            replaced(&route(Some(("10.1.0.0", 16)), 2, RouteProtocol::Boot, main)),
            Some("eth0")
        );
        assert_eq!(
            replaced(&route(Some(("fd00:1::", 64)), 2, RouteProtocol::Ra, main)),
            Some("eth0")
        );
        // Another device, the kernel's own, the local table, link-local.
        assert_eq!(replaced(&route(None, 3, RouteProtocol::Static, main)), None);
        assert_eq!(
            replaced(&route(
                Some(("10.88.0.0", 16)),
                2,
                RouteProtocol::Kernel,
                main
            )),
            None
        );
        assert_eq!(
            replaced(&route(
                Some(("10.88.0.5", 32)),
                2,
                RouteProtocol::Static,
                255
            )),
            None
        );
        assert_eq!(
            replaced(&route(Some(("fe80::", 64)), 2, RouteProtocol::Static, main)),
            None
        );
        // A table past 255 is only in RTA_TABLE.
        let mut high = route(None, 2, RouteProtocol::Static, 252);
        high.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(replaced(&high), None);
    }

    #[test]
    fn route_destinations_read_like_ip_route() {
        assert_eq!(
            route_destination(&route(None, 2, RouteProtocol::Static, 254)),
            "default"
        );
        assert_eq!(
            route_destination(&route(
                Some(("10.1.0.0", 16)),
                2,
                RouteProtocol::Static,
                254
            )),
            "10.1.0.0/16"
        );
    }

    #[test]
    fn a_missing_mac_names_it_and_lists_the_links() {
        let links = [
            Link {
                index: 1,
                name: "lo".into(),
                mac: vec![0; 6],
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: vec![2, 0, 0, 0, 0, 1],
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: vec![2, 0, 0, 0, 0, 2],
            },
            Link {
                index: 4,
                name: "twin".into(),
                mac: vec![2, 0, 0, 0, 0, 2],
            },
        ];
        let found = link_with_mac(&links, "02:00:00:00:00:01".parse().unwrap()).unwrap();
        assert_eq!(found.name, "eth0");
        let missing = link_with_mac(&links, "02:00:00:00:00:09".parse().unwrap()).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no link has MAC address 02:00:00:00:00:09; links: lo (00:00:00:00:00:00), \
             eth0 (02:00:00:00:00:01), eth1 (02:00:00:00:00:02), twin (02:00:00:00:00:02)"
        );
        let twice = link_with_mac(&links, "02:00:00:00:00:02".parse().unwrap()).unwrap_err();
        assert_eq!(
            twice.to_string(),
            "MAC address 02:00:00:00:00:02 is on more than one link: eth1, twin"
        );

        // A MAC no link has goes to the link of the name, which takes it.
        let mac = "02:00:00:00:00:09".parse().unwrap();
        let (named, new_mac) = link_for(&links, "eth1", mac).unwrap();
        assert_eq!((named.name.as_str(), new_mac), ("eth1", true));
        let (by_mac, new_mac) =
            link_for(&links, "eth1", "02:00:00:00:00:01".parse().unwrap()).unwrap();
        assert_eq!((by_mac.name.as_str(), new_mac), ("eth0", false));
        assert!(link_for(&links, "eth7", mac).is_err());
        assert!(link_for(&links, "eth0", "02:00:00:00:00:02".parse().unwrap()).is_err());
    }
}
