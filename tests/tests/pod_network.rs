//! The pod network wiring against real namespaces: a "pod" namespace with a
//! veth like CNI's bridge plugin makes, its peer in a second namespace
//! standing in for the node. Frames written to the tap (as the guest would
//! send them) must reach the node, and the node's answers must come back
//! out of the tap. Needs root, as the suite does.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use hull_shim::network::{GuestRoute, HeldTap, PodNetwork, TapHeader, TAP_NAME};

/// Two named network namespaces joined by a veth, removed on drop.
struct Namespaces {
    pod: String,
    node: String,
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Namespaces {
    fn new() -> Self {
        // Tests run in parallel in one process.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let namespaces = Namespaces {
            pod: format!("hull-pod-{tag}"),
            node: format!("hull-node-{tag}"),
        };
        ip(&["netns", "add", &namespaces.pod]);
        ip(&["netns", "add", &namespaces.node]);
        let pod = namespaces.pod.as_str();
        let node = namespaces.node.as_str();
        ip(&[
            "-n",
            node,
            "link",
            "add",
            "veth-node",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod,
        ]);
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            "veth-node",
        ]);
        ip(&["-n", node, "link", "set", "veth-node", "up"]);
        ip(&["-n", pod, "link", "set", "eth0", "mtu", "1400"]);
        ip(&["-n", pod, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        ip(&["-n", pod, "route", "add", "default", "via", "10.99.0.1"]);
        namespaces
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod)
    }

    fn pod_mac(&self) -> [u8; 6] {
        let json = ip(&["-j", "-n", &self.pod, "link", "show", "eth0"]);
        let links: serde_json::Value = serde_json::from_str(&json).unwrap();
        let text = links[0]["address"].as_str().unwrap();
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    fn in_pod(&self, command: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.pod])
            .args(command)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// An ARP "who has 10.99.0.1, tell 10.99.0.2" from `mac`.
fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend(mac);
    frame.extend([0x08, 0x06]); // ARP
    frame.extend([0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    frame.extend(mac);
    frame.extend([10, 99, 0, 2]);
    frame.extend([0; 6]);
    frame.extend([10, 99, 0, 1]);
    frame.resize(60, 0);
    frame
}

/// Reads frames from the tap until an ARP reply comes, or `deadline`.
fn read_arp_reply(tap: &std::os::fd::OwnedFd, deadline: Instant) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 2048];
    while Instant::now() < deadline {
        let mut poll = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(tap.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n >= 42 {
            let frame = &buffer[..n as usize];
            let is_arp_reply = frame[12..14] == [0x08, 0x06] && frame[20..22] == [0x00, 0x02];
            if is_arp_reply {
                return Some(frame.to_vec());
            }
        }
    }
    None
}

#[tokio::test]
async fn the_tap_carries_the_pod_interface_both_ways_and_is_undone() {
    let namespaces = Namespaces::new();
    let mac = namespaces.pod_mac();

    let network = PodNetwork::setup(&namespaces.netns_path(), TapHeader::None)
        .await
        .expect("setting up the pod network")
        .expect("the pod has an interface");
    assert_eq!(network.interface.mac, mac);
    assert_eq!(network.interface.mtu, 1400);
    assert_eq!(
        network.interface.addresses,
        vec![(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)), 24)]
    );
    assert!(
        network.routes.contains(&GuestRoute {
            destination: None,
            gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1))),
        }),
        "{:?}",
        network.routes
    );
    let filters = namespaces.in_pod(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(filters.contains("protocol all"), "{filters}");
    assert!(
        filters.contains("Egress Redirect to device hull0"),
        "{filters}"
    );
    let tap = ip(&["-j", "-n", &namespaces.pod, "link", "show", TAP_NAME]);
    assert!(tap.contains("\"mtu\":1400"), "{tap}");
    assert!(tap.contains("UP"), "{tap}");

    // The "guest" asks for the node's MAC through the tap; the node's
    // answer must come back out of it.
    let request = arp_request(mac);
    // SAFETY: writing a buffer we own, of its length.
    let written = unsafe {
        libc::write(
            network.tap().as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
        )
    };
    assert_eq!(written, request.len() as isize);
    let reply = read_arp_reply(network.tap(), Instant::now() + Duration::from_secs(5))
        .expect("no ARP reply from the node came out of the tap");
    assert_eq!(
        &reply[0..6],
        &mac,
        "the reply is addressed to the pod's MAC"
    );
    assert_eq!(&reply[28..32], &[10, 99, 0, 1], "sender is the node");

    network.teardown().await;
    let qdiscs = namespaces.in_pod(&["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    let links = ip(&["-n", &namespaces.pod, "link", "show"]);
    assert!(!links.contains(TAP_NAME), "{links}");
}

/// A VM booted ahead of its pod (the pool) has its tap in a namespace of
/// its own; adopting moves that very tap into the pod's namespace and
/// wires it as `setup` would.
#[tokio::test]
async fn a_held_tap_moves_into_the_pod_and_carries_its_interface() {
    let namespaces = Namespaces::new();
    let mac = namespaces.pod_mac();
    let held = HeldTap::create(TapHeader::None).expect("a tap in a namespace of its own");
    // Close-on-exec, as every descriptor of the shim's: the other tests of
    // this binary start processes meanwhile. It stands for the VMM's copy.
    let vmm_copy = held
        .tap()
        .try_clone()
        .expect("copying the tap's descriptor");
    let links = ip(&["-n", &namespaces.pod, "link", "show"]);
    assert!(!links.contains(TAP_NAME), "{links}");

    let mut held = Some(held);
    let network = PodNetwork::adopt(&namespaces.netns_path(), &mut held)
        .await
        .expect("adopting the tap")
        .expect("the pod has an interface");
    assert!(held.is_none(), "the tap is the pod network's now");
    assert_eq!(network.interface.mac, mac);
    let tap = ip(&["-j", "-n", &namespaces.pod, "link", "show", TAP_NAME]);
    assert!(tap.contains("\"mtu\":1400"), "{tap}");
    let filters = namespaces.in_pod(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        filters.contains("Egress Redirect to device hull0"),
        "{filters}"
    );

    let request = arp_request(mac);
    // SAFETY: writing a buffer we own, of its length.
    let written =
        unsafe { libc::write(vmm_copy.as_raw_fd(), request.as_ptr().cast(), request.len()) };
    assert_eq!(written, request.len() as isize);
    let reply = read_arp_reply(&vmm_copy, Instant::now() + Duration::from_secs(5))
        .expect("no ARP reply from the node came out of the VMM's tap");
    assert_eq!(&reply[0..6], &mac);

    network.teardown().await;
    drop(vmm_copy);
    let links = ip(&["-n", &namespaces.pod, "link", "show"]);
    assert!(!links.contains(TAP_NAME), "{links}");
}

/// A pod without an interface leaves a held tap where it is.
#[tokio::test]
async fn a_held_tap_stays_held_for_a_pod_without_an_interface() {
    let name = format!("hull-empty-held-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    let mut held = Some(HeldTap::create(TapHeader::None).unwrap());
    let adopted = PodNetwork::adopt(Path::new(&format!("/run/netns/{name}")), &mut held).await;
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert!(adopted.expect("no error").is_none());
    assert!(held.is_some());
}

/// With the built-in VMM the tap carries a virtio-net header: hull-vmm's
/// own tap code takes the shim's descriptor (as it would inherit it) and
/// the node's ARP answer comes back behind a header.
#[tokio::test]
async fn a_tap_with_a_virtio_net_header_is_what_hull_vmm_takes() {
    use hull_vmm::devices::virtio::net::Tap;
    let namespaces = Namespaces::new();
    let mac = namespaces.pod_mac();
    let network = PodNetwork::setup(&namespaces.netns_path(), TapHeader::VirtioNet)
        .await
        .expect("setting up the pod network")
        .expect("the pod has an interface");
    // SAFETY: dup of a descriptor the network owns; the copy goes to Tap.
    let copy = unsafe { libc::dup(network.tap().as_raw_fd()) };
    assert!(copy >= 0);
    let tap = Tap::from_fd(copy).expect("hull-vmm takes the shim's tap");
    assert_eq!(tap.name(), TAP_NAME);
    tap.write_frame(&[0; 12], &arp_request(mac)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 2048];
    let reply = loop {
        assert!(
            Instant::now() < deadline,
            "no ARP reply came out of the tap"
        );
        match tap.read_frame(&mut buffer) {
            Ok(n) if n >= 12 + 42 && buffer[12 + 20..12 + 22] == [0, 2] => {
                break buffer[12..n].to_vec()
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reading the tap: {e}"),
        }
    };
    assert_eq!(&reply[0..6], &mac);
    assert_eq!(&reply[28..32], &[10, 99, 0, 1], "sender is the node");
    drop(tap);
    network.teardown().await;
}

#[tokio::test]
async fn a_namespace_without_an_interface_has_no_network() {
    let name = format!("hull-empty-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let result = PodNetwork::setup(
        &PathBuf::from("/var/run/netns").join(&name),
        TapHeader::None,
    )
    .await;
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert!(result.expect("setup").is_none());
}

#[tokio::test]
async fn a_missing_namespace_is_named() {
    let err = PodNetwork::setup(
        std::path::Path::new("/var/run/netns/hull-no-such"),
        TapHeader::VirtioNet,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("/var/run/netns/hull-no-such"), "{err}");
}
