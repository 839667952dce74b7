//! The verbs: each validates what it needs, then drives the netlink and
//! gRPC shells. Order of ADD (allocate, wire, register) and DEL (unwire,
//! release) is the reverse of each other, and a failed ADD undoes what it did.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;
use weft_dataplane::link::{self, LinkError, Netlink, PodNetwork};
use weft_dataplane::names;
use weft_dataplane::netns::NetnsError;
use weft_proto::v1::{AllocateAddressReply, RegisterEndpointRequest};

use crate::agent::Agent;
use crate::check::{self, Expected, Observed};
use crate::config::{CniVersion, NetConf};
use crate::env::AttachmentEnv;
use crate::error::CniError;
use crate::result::{AddResult, ResultInterface};

/// The smallest MTU an IPv4 interface may have (RFC 791).
const MIN_MTU: u32 = 68;

/// The address part of an AllocateAddress reply, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

impl Allocation {
    /// Checks the agent's reply; a malformed one is an agent failure (103).
    pub fn from_reply(reply: &AllocateAddressReply) -> Result<Self, CniError> {
        let bad = |what: String| CniError::Agent {
            rpc: "AllocateAddress",
            code: "bad reply".into(),
            message: what,
        };
        let address = reply
            .address
            .parse()
            .map_err(|_| bad(format!("address {:?} is not IPv4", reply.address)))?;
        let prefix_len = u8::try_from(reply.prefix_len)
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| bad(format!("prefix length {}", reply.prefix_len)))?;
        let gateway = reply
            .gateway
            .parse()
            .map_err(|_| bad(format!("gateway {:?} is not IPv4", reply.gateway)))?;
        if reply.mtu < MIN_MTU {
            return Err(bad(format!("MTU {}", reply.mtu)));
        }
        Ok(Allocation {
            address,
            prefix_len,
            gateway,
            mtu: reply.mtu,
        })
    }
}

/// A netns that cannot be opened at all is an unknown container (code 3);
/// anything else about it is a dataplane failure.
fn netns_error(netns: &Path, err: LinkError) -> CniError {
    match err {
        LinkError::Netns(NetnsError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            CniError::ContainerUnknown {
                netns: netns.display().to_string(),
                reason: source.to_string(),
            }
        }
        LinkError::AlreadyExists {
            name,
            netns: Some(ns),
        } => CniError::InterfaceExists {
            ifname: name,
            netns: ns.display().to_string(),
        },
        other => CniError::Dataplane(other),
    }
}

fn netns_of(att: &AttachmentEnv) -> Result<&Path, CniError> {
    att.netns
        .as_deref()
        .ok_or(CniError::MissingEnv { name: "CNI_NETNS" })
}

/// ADD: allocate, wire, register; print the result for the config's version.
pub async fn add(att: &AttachmentEnv, conf: &NetConf) -> Result<Value, CniError> {
    let netns = netns_of(att)?;
    let host_ifname = names::host_ifname(&att.container_id, &att.ifname);
    // Checked before anything is allocated: an existing interface may be
    // the live result of an earlier ADD, whose address must not be released.
    let pod = Netlink::in_netns(netns).map_err(|e| netns_error(netns, e))?;
    if pod.link_exists(&att.ifname).await? {
        return Err(CniError::InterfaceExists {
            ifname: att.ifname.clone(),
            netns: netns.display().to_string(),
        });
    }
    let node = Netlink::current()?;
    let mut agent = Agent::connect(&conf.agent_socket, conf.timeout).await?;
    let reply = agent
        .allocate(
            &att.container_id,
            &att.ifname,
            &att.pod_name,
            &att.pod_namespace,
        )
        .await?;
    tracing::info!(address = %reply.address, pod_cidr = %reply.pod_cidr, "address allocated");
    match wire_and_register(&node, &mut agent, att, conf, &reply, &host_ifname).await {
        Ok(result) => Ok(result.render(conf.cni_version)),
        Err(err) => {
            tracing::warn!(error = %err, "ADD failed, undoing");
            undo_add(&node, &mut agent, att, &host_ifname).await;
            Err(err)
        }
    }
}

async fn wire_and_register(
    node: &Netlink,
    agent: &mut Agent,
    att: &AttachmentEnv,
    conf: &NetConf,
    reply: &AllocateAddressReply,
    host_ifname: &str,
) -> Result<AddResult, CniError> {
    let alloc = Allocation::from_reply(reply)?;
    let netns = netns_of(att)?;
    let spec = PodNetwork {
        netns: netns.to_path_buf(),
        host_ifname: host_ifname.to_string(),
        pod_ifname: att.ifname.clone(),
        address: alloc.address,
        prefix_len: alloc.prefix_len,
        gateway: alloc.gateway,
        mtu: alloc.mtu,
    };
    let wired = link::wire_pod(node, &spec)
        .await
        .map_err(|e| netns_error(netns, e))?;
    tracing::info!(host_ifname, pod_ifname = %att.ifname, "veth wired");
    agent
        .register(RegisterEndpointRequest {
            attachment: Some(weft_proto::v1::Attachment {
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            }),
            address: alloc.address.to_string(),
            host_ifname: host_ifname.to_string(),
            netns: netns.display().to_string(),
            pod_name: att.pod_name.clone(),
            pod_namespace: att.pod_namespace.clone(),
            labels: conf.labels.clone().into_iter().collect(),
            ports: conf
                .ports
                .iter()
                .map(|p| weft_proto::v1::ContainerPort {
                    name: p.name.clone().unwrap_or_default(),
                    container_port: p.container_port,
                    protocol: p.protocol.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .await?;
    let mac = |l: &link::LinkState| l.mac.map(|m| m.to_string()).unwrap_or_default();
    Ok(AddResult {
        host: ResultInterface {
            name: wired.host.name.clone(),
            mac: mac(&wired.host),
            sandbox: None,
            mtu: None,
        },
        container: ResultInterface {
            name: wired.pod.name.clone(),
            mac: mac(&wired.pod),
            sandbox: Some(netns.display().to_string()),
            mtu: wired.pod.mtu,
        },
        address: alloc.address,
        prefix_len: alloc.prefix_len,
        gateway: alloc.gateway,
    })
}

/// Best effort: the caller reports the original error either way.
async fn undo_add(node: &Netlink, agent: &mut Agent, att: &AttachmentEnv, host_ifname: &str) {
    if let Err(e) = node.delete_link(host_ifname).await {
        tracing::warn!(error = %e, host_ifname, "undo: cannot delete host veth");
    }
    if let Err(e) = agent.release(&att.container_id, &att.ifname).await {
        tracing::warn!(error = %e, "undo: cannot release the address; GC will");
    }
}

/// DEL: release the endpoint, then remove the veth (both ends go with the
/// host end). The agent removes the route and the guard entry before it
/// frees the address, so nothing leads to a veth that is going away; both
/// steps are idempotent, so a runtime's retry after a partial DEL finishes
/// it. Missing veth, netns or agent record are all success; an unreachable
/// agent is code 11 before anything is touched, so the address is never
/// lost silently.
pub async fn del(att: &AttachmentEnv, conf: &NetConf) -> Result<(), CniError> {
    let mut agent = Agent::connect(&conf.agent_socket, conf.timeout).await?;
    let host_ifname = names::host_ifname(&att.container_id, &att.ifname);
    let node = Netlink::current()?;
    let released = agent.release(&att.container_id, &att.ifname).await?;
    let deleted = node.delete_link(&host_ifname).await?;
    tracing::info!(host_ifname, deleted, released, "DEL done");
    Ok(())
}

/// CHECK: compare the container, the host end and the agent's record with
/// prevResult.
pub async fn check(att: &AttachmentEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK requires prevResult"))?;
    let (address, prefix_len) = prev.address_of(&att.ifname)?;
    let netns = netns_of(att)?;
    let expected = Expected {
        pod_ifname: att.ifname.clone(),
        host_ifname: names::host_ifname(&att.container_id, &att.ifname),
        address,
        prefix_len,
        gateway: names::POD_GATEWAY,
    };
    let mut agent = Agent::connect(&conf.agent_socket, conf.timeout).await?;
    let pod = match Netlink::in_netns(netns) {
        Ok(pod) => pod.pod_side_state(&att.ifname).await?,
        Err(LinkError::Netns(e)) => {
            return Err(CniError::check(format!(
                "cannot enter the container's network namespace: {e}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let host = Netlink::current()?.link(&expected.host_ifname).await?;
    let agent_address = agent
        .check(&att.container_id, &att.ifname)
        .await?
        .map(|e| e.address);
    check::verify(
        &expected,
        &Observed {
            pod,
            host,
            agent_address,
        },
    )
}

/// GC: the agent releases every attachment not in the valid list and
/// removes their host veths.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    require_1_1("GC", conf.cni_version)?;
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::config("GC requires cni.dev/valid-attachments"))?;
    let valid = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let mut agent = Agent::connect(&conf.agent_socket, conf.timeout).await?;
    let reply = agent.garbage_collect(valid).await?;
    for a in &reply.released {
        tracing::info!(container_id = %a.container_id, ifname = %a.ifname, "GC released");
    }
    for l in &reply.removed_links {
        tracing::info!(link = %l, "GC removed link");
    }
    Ok(())
}

/// STATUS: ready, or code 50 saying why not.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    require_1_1("STATUS", conf.cni_version)?;
    let not_ready = |reason: String| CniError::NotReady { reason };
    let mut agent = Agent::connect(&conf.agent_socket, conf.timeout)
        .await
        .map_err(|e| not_ready(e.to_string()))?;
    let reply = agent.status().await.map_err(|e| not_ready(e.to_string()))?;
    if reply.ready {
        Ok(())
    } else {
        Err(not_ready(format!(
            "weft-agent on {} is not ready: {}",
            reply.node_name, reply.message
        )))
    }
}

/// GC and STATUS are 1.1.0 verbs; an older config cannot ask for them.
fn require_1_1(verb: &'static str, version: CniVersion) -> Result<(), CniError> {
    if version >= CniVersion::V1_1_0 {
        Ok(())
    } else {
        Err(CniError::VerbNotInVersion {
            verb,
            version: version.as_str().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(address: &str, prefix_len: u32, gateway: &str, mtu: u32) -> AllocateAddressReply {
        AllocateAddressReply {
            address: address.into(),
            prefix_len,
            gateway: gateway.into(),
            mtu,
            pod_cidr: "10.244.1.0/24".into(),
        }
    }

    #[test]
    fn allocation_reply_is_validated() {
        let ok = Allocation::from_reply(&reply("10.244.1.5", 32, "169.254.1.1", 1480)).unwrap();
        assert_eq!(ok.address, Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(ok.mtu, 1480);
        for bad in [
            reply("10.244.1", 32, "169.254.1.1", 1480),
            reply("10.244.1.5", 33, "169.254.1.1", 1480),
            reply("10.244.1.5", 32, "", 1480),
            reply("10.244.1.5", 32, "169.254.1.1", 0),
        ] {
            assert_eq!(Allocation::from_reply(&bad).unwrap_err().code(), 103);
        }
    }

    #[test]
    fn gc_and_status_need_1_1_0() {
        assert_eq!(require_1_1("GC", CniVersion::V1_0_0).unwrap_err().code(), 1);
        assert_eq!(
            require_1_1("STATUS", CniVersion::V0_4_0)
                .unwrap_err()
                .code(),
            1
        );
        assert!(require_1_1("GC", CniVersion::V1_1_0).is_ok());
    }
}
