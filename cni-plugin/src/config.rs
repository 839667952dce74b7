//! The network configuration on stdin, parsed and validated.
//!
//! Two steps, because the spec gives them different codes: bytes that are
//! not JSON are code 6 ("failed to decode content"); JSON that is not a valid
//! Weft configuration is code 7 ("invalid network config"), except an
//! unsupported `cniVersion`, which is code 1.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::CniError;

/// Where the agent listens unless the config says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/weft/agent.sock";
/// How long one agent request may take unless the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeoutSeconds` accepted: runtimes give up long before.
const MAX_TIMEOUT_SECONDS: u64 = 300;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A CNI spec version this plugin speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// All supported versions, oldest first (the VERSION reply).
    pub const SUPPORTED: [CniVersion; 3] =
        [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];
    /// The version of replies that have no config to take one from.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version named `s`, if supported.
    pub fn parse(s: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }
}

/// The VERSION reply.
pub fn version_reply() -> Value {
    serde_json::json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

/// An attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The parts of a previous ADD result that CHECK compares against.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    #[serde(default)]
    pub ips: Vec<PrevIp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PrevInterface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PrevIp {
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub interface: Option<usize>,
}

impl PrevResult {
    /// The IPv4 address (and prefix length) the previous ADD gave to the
    /// container interface `ifname`.
    pub fn address_of(&self, ifname: &str) -> Result<(Ipv4Addr, u8), CniError> {
        let index = self
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
            .ok_or_else(|| {
                CniError::config(format!("prevResult has no container interface {ifname}"))
            })?;
        let ip = self
            .ips
            .iter()
            .find(|ip| ip.interface == Some(index))
            .ok_or_else(|| {
                CniError::config(format!("prevResult has no address for interface {ifname}"))
            })?;
        let (addr, len) = ip.address.split_once('/').ok_or_else(|| {
            CniError::config(format!("prevResult address {:?} is not CIDR", ip.address))
        })?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| {
            CniError::config(format!("prevResult address {:?} is not IPv4", ip.address))
        })?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| {
            CniError::config(format!(
                "prevResult address {:?} has a bad prefix",
                ip.address
            ))
        })?;
        Ok((addr, len))
    }
}

/// A validated Weft network configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub agent_socket: PathBuf,
    pub timeout: Duration,
    /// `args.cni.labels` (CNI conventions), for the endpoint's labels.
    pub labels: BTreeMap<String, String>,
    /// `args.cni.ports`, the pod's container ports (for named ports in
    /// policies); the agent validates them.
    pub ports: Vec<ContainerPort>,
    pub prev_result: Option<PrevResult>,
    /// `cni.dev/valid-attachments`; None when absent (only GC needs it).
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

impl NetConf {
    /// Parses stdin's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(CniError::Decode)?;
        let Value::Object(obj) = value else {
            return Err(CniError::config("the configuration is not a JSON object"));
        };
        let version: String = required(&obj, "cniVersion")?;
        let cni_version =
            CniVersion::parse(&version).ok_or(CniError::IncompatibleVersion { version })?;
        let name: String = required(&obj, "name")?;
        validate_network_name(&name)?;
        let plugin_type: String = required(&obj, "type")?;
        if plugin_type.is_empty() {
            return Err(CniError::config("field type is empty"));
        }
        let agent_socket = match optional::<String>(&obj, "agentSocket")? {
            Some(path) => validate_socket_path(path)?,
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
        };
        let timeout = match optional::<u64>(&obj, "timeoutSeconds")? {
            Some(secs @ 1..=MAX_TIMEOUT_SECONDS) => Duration::from_secs(secs),
            Some(secs) => {
                return Err(CniError::config(format!(
                    "timeoutSeconds {secs} is outside 1..={MAX_TIMEOUT_SECONDS}"
                )));
            }
            None => DEFAULT_TIMEOUT,
        };
        Ok(NetConf {
            cni_version,
            name,
            agent_socket,
            timeout,
            labels: labels(&obj)?,
            ports: cni_arg(&obj, "ports")?.unwrap_or_default(),
            prev_result: optional(&obj, "prevResult")?,
            valid_attachments: optional(&obj, "cni.dev/valid-attachments")?,
        })
    }

    /// The config version as far as it can be read, for error replies of a
    /// config that failed validation later on: a supported `cniVersion`, else
    /// the latest.
    pub fn version_hint(bytes: &[u8]) -> CniVersion {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(Value::as_str)
                    .and_then(CniVersion::parse)
            })
            .unwrap_or(CniVersion::LATEST)
    }
}

/// A field that must be present and of type `T`.
fn required<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<T, CniError> {
    optional(obj, key)?.ok_or_else(|| CniError::config(format!("field {key} is missing")))
}

/// A field that may be absent (or null) but must be of type `T` if present.
fn optional<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|e| CniError::config(format!("field {key}: {e}"))),
    }
}

/// The spec's rule for network names: an alphanumeric first character, then
/// alphanumerics, `_`, `.` or `-`.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "network name {name:?} is not valid"
        )))
    }
}

/// An absolute path that fits a unix socket address.
fn validate_socket_path(path: String) -> Result<PathBuf, CniError> {
    if !path.starts_with('/') {
        return Err(CniError::config(format!(
            "agentSocket {path:?} is not an absolute path"
        )));
    }
    if path.contains('\0') {
        return Err(CniError::config("agentSocket contains a NUL byte"));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(CniError::config(format!(
            "agentSocket is {} bytes, longer than a unix socket path may be ({MAX_SOCKET_PATH})",
            path.len()
        )));
    }
    Ok(PathBuf::from(path))
}

/// A container port as a pod spec writes it (`args.cni.ports[i]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u32,
    /// TCP when absent, as in a pod spec.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `args.cni.<key>` (CNI conventions), if present. Weft understands the
/// args it reads, so a malformed one is an error rather than dropped.
fn cni_arg<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, CniError> {
    let Some(value) = obj
        .get("args")
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get(key))
    else {
        return Ok(None);
    };
    T::deserialize(value)
        .map(Some)
        .map_err(|e| CniError::config(format!("field args.cni.{key}: {e}")))
}

/// `args.cni.labels`: a list of `{"key", "value"}` (CNI conventions). Weft
/// understands this field (labels select endpoints for policy), so a
/// malformed one is an error rather than silently dropped.
fn labels(obj: &Map<String, Value>) -> Result<BTreeMap<String, String>, CniError> {
    #[derive(Deserialize)]
    struct Label {
        key: String,
        value: String,
    }
    let labels: Vec<Label> = cni_arg(obj, "labels")?.unwrap_or_default();
    Ok(labels.into_iter().map(|l| (l.key, l.value)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(version: &str) -> String {
        format!(r#"{{"cniVersion":"{version}","name":"weft","type":"weft-cni"}}"#)
    }

    fn code(bytes: &str) -> u32 {
        NetConf::parse(bytes.as_bytes())
            .expect_err("should fail")
            .code()
    }

    #[test]
    fn each_supported_version_parses_with_defaults() {
        for v in ["0.4.0", "1.0.0", "1.1.0"] {
            let c = NetConf::parse(conf(v).as_bytes()).unwrap();
            assert_eq!(c.cni_version.as_str(), v);
            assert_eq!(c.name, "weft");
            assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
            assert_eq!(c.timeout, DEFAULT_TIMEOUT);
            assert!(c.labels.is_empty());
            assert!(c.ports.is_empty());
            assert!(c.prev_result.is_none());
            assert!(c.valid_attachments.is_none());
        }
    }

    #[test]
    fn full_config_parses() {
        let c = NetConf::parse(
            br#"{
                "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "weft-cni",
                "agentSocket": "/run/weft/node-1.sock", "timeoutSeconds": 3,
                "args": {"cni": {"labels": [{"key": "app", "value": "web"}],
                                 "ports": [{"name": "http", "containerPort": 8080},
                                           {"containerPort": 53, "protocol": "UDP"}]}},
                "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
                "someOtherPluginField": true
            }"#,
        )
        .unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/run/weft/node-1.sock"));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            c.ports,
            [
                ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    protocol: None
                },
                ContainerPort {
                    name: None,
                    container_port: 53,
                    protocol: Some("UDP".into())
                }
            ]
        );
        assert_eq!(
            c.valid_attachments,
            Some(vec![ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn unsupported_versions_are_code_1() {
        assert_eq!(code(&conf("0.3.1")), 1);
        assert_eq!(code(&conf("2.0.0")), 1);
        assert_eq!(code(&conf("banana")), 1);
    }

    #[test]
    fn malformed_json_is_code_6() {
        assert_eq!(code("{"), 6);
        assert_eq!(code(""), 6);
        assert_eq!(code("cniVersion: 1.0.0"), 6);
    }

    #[test]
    fn invalid_configs_are_code_7() {
        assert_eq!(code("[]"), 7);
        assert_eq!(
            code(r#"{"name":"weft","type":"weft-cni"}"#),
            7,
            "no cniVersion"
        );
        assert_eq!(
            code(r#"{"cniVersion":1,"name":"weft","type":"weft-cni"}"#),
            7,
            "version not a string"
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","type":"weft-cni"}"#),
            7,
            "no name"
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"-bad","type":"weft-cni"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"weft"}"#),
            7,
            "no type"
        );
        let with = |extra: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"weft","type":"weft-cni",{extra}}}"#)
        };
        assert_eq!(code(&with(r#""agentSocket":"relative.sock""#)), 7);
        assert_eq!(code(&with(r#""agentSocket":42"#)), 7);
        assert_eq!(
            code(&with(&format!(r#""agentSocket":"/{}""#, "a".repeat(120)))),
            7
        );
        assert_eq!(code(&with(r#""timeoutSeconds":0"#)), 7);
        assert_eq!(code(&with(r#""timeoutSeconds":"10""#)), 7);
        assert_eq!(code(&with(r#""args":{"cni":{"labels":{"app":"web"}}}"#)), 7);
        assert_eq!(code(&with(r#""args":{"cni":{"ports":[{"port":80}]}}"#)), 7);
        assert_eq!(
            code(&with(
                r#""args":{"cni":{"ports":[{"containerPort":"80"}]}}"#
            )),
            7
        );
        assert_eq!(code(&with(r#""prevResult":{"ips":"nope"}"#)), 7);
        assert_eq!(
            code(&with(
                r#""cni.dev/valid-attachments":[{"containerID":"c1"}]"#
            )),
            7
        );
    }

    #[test]
    fn version_hint_falls_back_to_latest() {
        assert_eq!(
            NetConf::version_hint(conf("0.4.0").as_bytes()),
            CniVersion::V0_4_0
        );
        assert_eq!(NetConf::version_hint(b"{"), CniVersion::LATEST);
        assert_eq!(
            NetConf::version_hint(conf("0.2.0").as_bytes()),
            CniVersion::LATEST
        );
    }

    #[test]
    fn version_reply_lists_all_versions() {
        assert_eq!(
            version_reply().to_string(),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn prev_result_yields_the_container_address() {
        let prev: PrevResult = serde_json::from_str(
            r#"{"interfaces":[{"name":"weftabc","mac":"aa:bb:cc:dd:ee:ff"},
                              {"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/run/netns/p"}],
                "ips":[{"version":"4","address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            prev.address_of("eth0").unwrap(),
            (Ipv4Addr::new(10, 244, 1, 5), 32)
        );
        assert_eq!(prev.address_of("eth1").unwrap_err().code(), 7);
        assert_eq!(
            prev.address_of("weftabc").unwrap_err().code(),
            7,
            "host interface has no sandbox"
        );
    }
}
