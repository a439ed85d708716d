//! A pod's network: CNI sets up a veth in the pod's network namespace; Hull
//! creates a tap beside it, redirects every frame between the two with tc
//! `mirred` on both ingress hooks, gives the tap to the VM as its NIC with
//! the veth's MAC, and has the agent give the guest NIC the veth's
//! addresses and routes. The namespace's own IP stack never sees a frame, so
//! the guest is the pod's network endpoint, as a runc pod's processes are.
//!
//! All netlink work runs on a dedicated thread that has entered the pod's
//! namespace, never on a shared runtime thread.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
pub use hull_vmm_api::net::TapHeader;
use hull_vmm_api::net::{attach_tap, TapError};
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The tap's name in the pod's namespace.
pub const TAP_NAME: &str = "hull0";
/// The guest NIC's name.
pub const GUEST_INTERFACE: &str = "eth0";
/// `ETH_P_ALL`: the redirect filters match every protocol (netlink wants
/// it in network byte order).
const ETH_P_ALL: u16 = 0x0003;
/// `TC_H_INGRESS`'s handle `ffff:`, the parent of ingress filters.
const INGRESS_PARENT: u32 = 0xffff_0000;
const MAIN_TABLE: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error("Entering the pod's network namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Pod network in {netns}: {what}: {message}")]
    Netlink {
        netns: PathBuf,
        what: String,
        message: String,
    },
    #[error("Creating the tap in {netns}: {source}")]
    Tap {
        netns: PathBuf,
        #[source]
        source: TapError,
    },
}

/// The guest's view of the pod's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Addresses with their prefix lengths (no IPv6 link-local: the guest
    /// makes its own from the same MAC).
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route of the pod's interface: `destination` None is the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
}

/// The pod's network, wired to a tap the VM uses.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    veth_index: u32,
    /// The tap stays while this or the VMM's copy is open.
    tap: OwnedFd,
    pub interface: GuestInterface,
    pub routes: Vec<GuestRoute>,
}

impl PodNetwork {
    /// Wires the pod's interface to a new tap whose frames carry `header`.
    /// `None` when the namespace has no interface besides loopback (a pod
    /// without CNI networking).
    pub async fn setup(
        netns: &Path,
        header: TapHeader,
    ) -> Result<Option<PodNetwork>, PodNetworkError> {
        let path = netns.to_owned();
        in_namespace(netns, move |handle| async move {
            setup(&path, &handle, Tap::New(header)).await
        })
        .await?
    }

    /// Wires the pod's interface to the tap a VM booted ahead of the pod
    /// already has, moving the tap into the pod's namespace first. `None`
    /// (and the tap left where it is) when the namespace has no interface
    /// besides loopback.
    pub async fn adopt(
        netns: &Path,
        held: &mut Option<HeldTap>,
    ) -> Result<Option<PodNetwork>, PodNetworkError> {
        let Some(tap) = held.as_ref() else {
            return Ok(None);
        };
        let pod = File::open(netns).map_err(|source| PodNetworkError::Namespace {
            path: netns.to_owned(),
            source,
        })?;
        let path = netns.to_owned();
        let has_interface = in_namespace(netns, |handle| async move {
            let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
            Ok::<_, rtnetlink::Error>(links.iter().any(is_pod_interface))
        })
        .await?
        .map_err(|e| PodNetworkError::Netlink {
            netns: path.clone(),
            what: "listing links".into(),
            message: e.to_string(),
        })?;
        if !has_interface {
            return Ok(None);
        }
        let holding = tap.namespace_path();
        let moved = in_namespace(&holding, move |handle| async move {
            let index = handle
                .link()
                .get()
                .match_name(TAP_NAME.to_owned())
                .execute()
                .try_next()
                .await?
                .map(|l| l.header.index);
            let Some(index) = index else {
                return Ok(false);
            };
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .setns_by_fd(pod.as_raw_fd())
                        .build(),
                )
                .execute()
                .await?;
            Ok::<_, rtnetlink::Error>(true)
        })
        .await?;
        let failed = |message: String| PodNetworkError::Netlink {
            netns: path.clone(),
            what: format!("moving {TAP_NAME} in"),
            message,
        };
        match moved {
            Ok(true) => {}
            Ok(false) => return Err(failed("the tap is gone from its namespace".into())),
            Err(e) => return Err(failed(e.to_string())),
        }
        let tap = held.take().expect("checked above").tap;
        let path = netns.to_owned();
        in_namespace(netns, move |handle| async move {
            setup(&path, &handle, Tap::Moved(tap)).await
        })
        .await?
    }

    /// The tap's file descriptor, for the VMM.
    pub fn tap(&self) -> &OwnedFd {
        &self.tap
    }

    /// Removes the redirect from the pod's veth and closes the tap (which
    /// then disappears with the VMM's copy). A namespace that is already
    /// gone (CNI tore it down) leaves nothing to undo.
    pub async fn teardown(self) {
        let PodNetwork {
            netns,
            veth_index,
            tap,
            ..
        } = self;
        drop(tap);
        if !netns.exists() {
            return;
        }
        let removed = in_namespace(&netns, move |handle| async move {
            let mut qdiscs = handle.qdisc();
            let mut request = qdiscs.del(veth_index as i32);
            request.message_mut().header.parent = INGRESS_PARENT.into();
            request.execute().await.map_err(|e| e.to_string())
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            // The veth went first: nothing to undo.
            Ok(Err(message)) if message.contains("No such device") => {}
            Ok(Err(message)) => {
                tracing::warn!(netns = %netns.display(), %message, "removing the redirect from the pod's veth")
            }
            Err(err) => tracing::warn!(%err, "removing the redirect from the pod's veth"),
        }
    }
}

/// Runs `work` with a netlink handle inside the network namespace `netns`,
/// on a thread of its own that ends with the work.
async fn in_namespace<T, F, Fut>(netns: &Path, work: F) -> Result<T, PodNetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let namespace_error = |source| PodNetworkError::Namespace {
        path: netns.to_owned(),
        source,
    };
    let file = File::open(netns).map_err(namespace_error)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hull-netns".into())
        .spawn(move || {
            let result = (|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let (connection, handle, _) = rtnetlink::new_connection()?;
                    tokio::spawn(connection);
                    Ok(work(handle).await)
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(namespace_error)?;
    rx.await
        .map_err(|_| namespace_error(std::io::Error::other("the namespace thread panicked")))?
        .map_err(namespace_error)
}

/// A tap made in a network namespace of its own before its pod exists, for
/// a VM booted ahead (the pool). The namespace lives while this does.
#[derive(Debug)]
pub struct HeldTap {
    namespace: File,
    tap: OwnedFd,
}

impl HeldTap {
    /// Makes a network namespace with a tap `hull0` in it.
    pub fn create(header: TapHeader) -> Result<HeldTap, PodNetworkError> {
        let failed = |source| PodNetworkError::Namespace {
            path: "a new network namespace".into(),
            source,
        };
        std::thread::Builder::new()
            .name("hull-netns".into())
            .spawn(move || {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| failed(std::io::Error::from(e)))?;
                let namespace = File::open("/proc/thread-self/ns/net").map_err(failed)?;
                let tap = attach_tap(TAP_NAME, header).map_err(|source| PodNetworkError::Tap {
                    netns: "a new network namespace".into(),
                    source,
                })?;
                Ok(HeldTap { namespace, tap })
            })
            .map_err(failed)?
            .join()
            .map_err(|_| failed(std::io::Error::other("the namespace thread panicked")))?
    }

    /// The tap's file descriptor, for the VMM.
    pub fn tap(&self) -> &OwnedFd {
        &self.tap
    }

    fn namespace_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.namespace.as_raw_fd()))
    }
}

/// Where the pod's tap comes from.
enum Tap {
    /// Made now, in the pod's namespace.
    New(TapHeader),
    /// Moved in from a [`HeldTap`]'s namespace.
    Moved(OwnedFd),
}

async fn setup(
    netns: &Path,
    handle: &Handle,
    tap: Tap,
) -> Result<Option<PodNetwork>, PodNetworkError> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: rtnetlink::Error| PodNetworkError::Netlink {
            netns: netns.to_owned(),
            what,
            message: e.to_string(),
        }
    };
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing links"))?;
    let Some(veth) = links.iter().find(|l| is_pod_interface(l)) else {
        return Ok(None);
    };
    let veth_index = veth.header.index;
    let mac = link_mac(veth).ok_or_else(|| PodNetworkError::Netlink {
        netns: netns.to_owned(),
        what: format!("interface {}", link_name(veth)),
        message: "has no Ethernet address".into(),
    })?;
    let mtu = veth
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(1500);

    let mut addresses = Vec::new();
    let mut listing = handle
        .address()
        .get()
        .set_link_index_filter(veth_index)
        .execute();
    while let Some(message) = listing
        .try_next()
        .await
        .map_err(failed("listing addresses"))?
    {
        for attribute in &message.attributes {
            if let AddressAttribute::Address(ip) = attribute {
                if !is_link_local(ip) {
                    addresses.push((*ip, message.header.prefix_len));
                }
            }
        }
    }

    let mut routes = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let found: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing routes"))?;
        routes.extend(found.iter().filter_map(|r| guest_route(r, veth_index)));
    }

    let tap = match tap {
        Tap::New(header) => {
            attach_tap(TAP_NAME, header).map_err(|source| PodNetworkError::Tap {
                netns: netns.to_owned(),
                source,
            })?
        }
        Tap::Moved(fd) => fd,
    };
    let tap_index = handle
        .link()
        .get()
        .match_name(TAP_NAME.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(failed("finding the tap"))?
        .map(|l| l.header.index)
        .ok_or_else(|| PodNetworkError::Netlink {
            netns: netns.to_owned(),
            what: format!("finding {TAP_NAME}"),
            message: "not listed after creating it".into(),
        })?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(failed("bringing the tap up"))?;
    for (from, to) in [(veth_index, tap_index), (tap_index, veth_index)] {
        handle
            .qdisc()
            .add(from as i32)
            .ingress()
            .execute()
            .await
            .map_err(failed("adding an ingress qdisc"))?;
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ETH_P_ALL.to_be())
            .redirect(to)
            .map_err(failed("building the redirect"))?
            .execute()
            .await
            .map_err(failed("adding the redirect filter"))?;
    }
    Ok(Some(PodNetwork {
        netns: netns.to_owned(),
        veth_index,
        tap,
        interface: GuestInterface {
            mac,
            mtu,
            addresses,
        },
        routes,
    }))
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("#{}", link.header.index))
}

fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// The pod's interface: the first one that is not loopback and has an
/// Ethernet address (CNI's veth, normally `eth0`).
fn is_pod_interface(link: &LinkMessage) -> bool {
    !link.header.flags.contains(LinkFlags::Loopback) && link_mac(link).is_some()
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// A route of the pod's interface that the guest must be told about: the
/// main table's unicast routes through it, except those the kernel makes
/// for an address (the guest's kernel makes them too).
fn guest_route(route: &RouteMessage, veth_index: u32) -> Option<GuestRoute> {
    let through_veth = route
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Oif(index) if *index == veth_index));
    if !through_veth
        || route.header.table != MAIN_TABLE
        || route.header.kind != RouteType::Unicast
        || route.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let address = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut destination = None;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(d) => destination = address(d),
            RouteAttribute::Gateway(g) => gateway = address(g),
            _ => {}
        }
    }
    if destination.as_ref().is_some_and(is_link_local) {
        return None;
    }
    Some(GuestRoute {
        destination: destination.map(|d| (d, route.header.destination_prefix_length)),
        gateway,
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteHeader;

    fn route(
        oif: u32,
        protocol: RouteProtocol,
        destination: Option<(Ipv4Addr, u8)>,
        gateway: Option<Ipv4Addr>,
    ) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header = RouteHeader {
            table: MAIN_TABLE,
            kind: RouteType::Unicast,
            protocol,
            destination_prefix_length: destination.map_or(0, |(_, len)| len),
            ..RouteHeader::default()
        };
        message.attributes.push(RouteAttribute::Oif(oif));
        if let Some((d, _)) = destination {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(d)));
        }
        if let Some(g) = gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
        }
        message
    }

    #[test]
    fn the_guest_gets_the_gateway_routes_of_the_pod_interface() {
        let gw = Ipv4Addr::new(10, 88, 0, 1);
        let default = route(2, RouteProtocol::Boot, None, Some(gw));
        assert_eq!(
            guest_route(&default, 2),
            Some(GuestRoute {
                destination: None,
                gateway: Some(IpAddr::V4(gw)),
            })
        );
        let subnet = route(
            2,
            RouteProtocol::Boot,
            Some((Ipv4Addr::new(10, 0, 0, 0), 8)),
            Some(gw),
        );
        assert_eq!(
            guest_route(&subnet, 2).unwrap().destination,
            Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8))
        );
        // The kernel's route for an address, and other interfaces' routes,
        // are not the guest's business.
        let kernel = route(
            2,
            RouteProtocol::Kernel,
            Some((Ipv4Addr::new(10, 88, 0, 0), 16)),
            None,
        );
        assert_eq!(guest_route(&kernel, 2), None);
        assert_eq!(guest_route(&default, 3), None);
    }

    #[test]
    fn link_local_addresses_are_left_to_the_guest() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"169.254.1.1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
        assert!(!is_link_local(&"10.88.0.2".parse().unwrap()));
    }

    #[test]
    fn macs_print_like_ip_link_does() {
        assert_eq!(
            format_mac(&[0x02, 0x42, 0xac, 0x11, 0x00, 0x0a]),
            "02:42:ac:11:00:0a"
        );
    }
}
