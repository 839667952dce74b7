//! Weft's BGPPeer custom resource as the API server serves it, for the
//! reflector. Its `spec` stays raw JSON here: one malformed object must
//! not make the whole list undecodable (which would stall the watch for
//! every peer); [`to_model`] checks each one as `weftctl lab apply` would,
//! and the source skips, with its name, one it refuses.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ClusterResourceScope;
use serde::{Deserialize, Serialize};
use weft_model::BgpPeer;
use weft_model::bgp_peer::{self, Metadata};

use super::convert::Refused;
use super::crd::{BGP_PEER_PLURAL, BGP_PEER_VERSION, GROUP};

/// A `weft.dev/v1alpha1` BGPPeer object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BgpPeerObject {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl kube::Resource for BgpPeerObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        bgp_peer::KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        BGP_PEER_VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        BGP_PEER_PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The peer in the model's type, with the checks of a manifest.
pub fn to_model(object: &BgpPeerObject) -> Result<BgpPeer, Refused> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let refused = |field: &str, reason: String| Refused {
        kind: bgp_peer::KIND,
        name: name.clone(),
        field: field.into(),
        reason,
    };
    let spec =
        serde_json::from_value(object.spec.clone()).map_err(|e| refused("spec", e.to_string()))?;
    let peer = BgpPeer {
        api_version: bgp_peer::API_VERSION.into(),
        kind: bgp_peer::KIND.into(),
        metadata: Metadata {
            name: name.clone(),
            labels: object.metadata.labels.clone().unwrap_or_default(),
            annotations: object.metadata.annotations.clone().unwrap_or_default(),
        },
        spec,
    };
    // One object: its "document" is the first.
    peer.validate(1)
        .map_err(|e| refused("spec", e.to_string()))?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value) -> BgpPeerObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "tor-a", "uid": "u", "resourceVersion": "9",
                         "labels": {"rack": "a"}},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_served_peer_becomes_the_model_peer_or_is_refused_by_name() {
        let peer = to_model(&object(serde_json::json!(
            {"peerIP": "198.18.0.200", "asNumber": 64600, "node": "node1"}
        )))
        .unwrap();
        assert_eq!(peer.metadata.name, "tor-a");
        assert_eq!(peer.metadata.labels["rack"], "a");
        assert_eq!(peer.spec.as_number, 64600);
        assert!(peer.applies_to("node1") && !peer.applies_to("node2"));

        let e = to_model(&object(
            serde_json::json!({"peerIP": "198.18.0.200", "asNumber": 0}),
        ))
        .unwrap_err();
        assert_eq!(e.name, "tor-a");
        assert!(e.reason.contains("spec.asNumber"), "{e}");
        let e = to_model(&object(
            serde_json::json!({"peerIP": "nowhere", "asNumber": 1}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec");
    }
}
