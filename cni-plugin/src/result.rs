//! The ADD result, rendered for the config's CNI version.
//!
//! Differences between the versions Weft speaks: 0.4.0 carries
//! `"version": "4"` on each IP; 1.0.0 dropped it; 1.1.0 added the interface
//! `mtu`. Everything else is the same shape.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::config::CniVersion;

/// An interface in the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultInterface {
    pub name: String,
    pub mac: String,
    /// The netns path for the container end; None for the host end.
    pub sandbox: Option<String>,
    /// The MTU; Weft reports it for the container end only (1.1.0 only).
    pub mtu: Option<u32>,
}

/// What ADD did, independent of the CNI version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddResult {
    pub host: ResultInterface,
    pub container: ResultInterface,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

impl AddResult {
    /// The result JSON for `version`. Interface 0 is the host end, 1 the
    /// container end, which owns the address.
    pub fn render(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = [&self.host, &self.container]
            .into_iter()
            .map(|i| interface(i, version))
            .collect();
        let mut ip = json!({
            "address": format!("{}/{}", self.address, self.prefix_len),
            "gateway": self.gateway.to_string(),
            "interface": 1,
        });
        if version == CniVersion::V0_4_0 {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway.to_string()}],
            "dns": {},
        })
    }
}

fn interface(i: &ResultInterface, version: CniVersion) -> Value {
    let mut v = json!({ "name": i.name, "mac": i.mac });
    if let Some(sandbox) = &i.sandbox {
        v["sandbox"] = json!(sandbox);
    }
    if let (Some(mtu), CniVersion::V1_1_0) = (i.mtu, version) {
        v["mtu"] = json!(mtu);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            host: ResultInterface {
                name: "weft538f587a236".into(),
                mac: "ee:ee:ee:ee:ee:01".into(),
                sandbox: None,
                mtu: None,
            },
            container: ResultInterface {
                name: "eth0".into(),
                mac: "02:42:0a:f4:01:05".into(),
                sandbox: Some("/run/netns/pod".into()),
                mtu: Some(1480),
            },
            address: Ipv4Addr::new(10, 244, 1, 5),
            prefix_len: 32,
            gateway: Ipv4Addr::new(169, 254, 1, 1),
        }
    }

    /// Compares as JSON values, so key order does not matter.
    fn assert_golden(version: CniVersion, golden: &str) {
        let golden: Value = serde_json::from_str(golden).unwrap();
        assert_eq!(sample().render(version), golden);
    }

    #[test]
    fn golden_0_4_0() {
        assert_golden(
            CniVersion::V0_4_0,
            r#"{"cniVersion":"0.4.0","dns":{},"interfaces":[{"mac":"ee:ee:ee:ee:ee:01","name":"weft538f587a236"},{"mac":"02:42:0a:f4:01:05","name":"eth0","sandbox":"/run/netns/pod"}],"ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1,"version":"4"}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}"#,
        );
    }

    #[test]
    fn golden_1_0_0() {
        assert_golden(
            CniVersion::V1_0_0,
            r#"{"cniVersion":"1.0.0","dns":{},"interfaces":[{"mac":"ee:ee:ee:ee:ee:01","name":"weft538f587a236"},{"mac":"02:42:0a:f4:01:05","name":"eth0","sandbox":"/run/netns/pod"}],"ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}"#,
        );
    }

    #[test]
    fn golden_1_1_0() {
        assert_golden(
            CniVersion::V1_1_0,
            r#"{"cniVersion":"1.1.0","dns":{},"interfaces":[{"mac":"ee:ee:ee:ee:ee:01","name":"weft538f587a236"},{"mac":"02:42:0a:f4:01:05","mtu":1480,"name":"eth0","sandbox":"/run/netns/pod"}],"ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}"#,
        );
    }

    #[test]
    fn rendered_result_is_read_back_by_check() {
        for v in CniVersion::SUPPORTED {
            let prev: crate::config::PrevResult =
                serde_json::from_value(sample().render(v)).unwrap();
            assert_eq!(
                prev.address_of("eth0").unwrap(),
                (Ipv4Addr::new(10, 244, 1, 5), 32)
            );
        }
    }
}
