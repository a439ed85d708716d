//! The pod's network as the guest sees it, set through the agent.

use hull_protocols::agent::{
    Interface, IpAddress, Route, UpdateInterfaceRequest, UpdateRoutesRequest,
};

use super::SETUP_CALL;
use crate::agent_client::{context, AgentClient};
use crate::network::{format_mac, PodNetwork, GUEST_INTERFACE};

/// Gives the guest NIC the pod interface's MAC, MTU, addresses and routes.
pub(super) async fn configure_guest_network(
    agent: &AgentClient,
    network: &PodNetwork,
) -> Result<(), ttrpc::Error> {
    let interface = &network.interface;
    let request = UpdateInterfaceRequest {
        interface: Some(Interface {
            name: GUEST_INTERFACE.into(),
            mac_address: format_mac(&interface.mac),
            mtu: interface.mtu,
            addresses: interface
                .addresses
                .iter()
                .map(|(address, prefix)| IpAddress {
                    address: address.to_string(),
                    prefix_length: u32::from(*prefix),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    agent
        .api()
        .update_interface(context(SETUP_CALL), &request)
        .await?;
    let request = UpdateRoutesRequest {
        routes: network
            .routes
            .iter()
            .map(|route| Route {
                destination: route
                    .destination
                    .map_or_else(|| "default".into(), |(ip, len)| format!("{ip}/{len}")),
                gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: GUEST_INTERFACE.into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    agent
        .api()
        .update_routes(context(SETUP_CALL), &request)
        .await?;
    Ok(())
}
