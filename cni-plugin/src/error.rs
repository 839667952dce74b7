//! The one error type of weft-cni and its CNI error code.
//!
//! Codes 0-99 are the spec's well-known codes; 100+ are Weft's own
//! (`CNI SPEC 1.1.0, "Error"`). Every variant says which code it maps to and
//! why, so a runtime (and an operator reading its logs) can act on it.

use serde::Serialize;

/// A failure of one CNI invocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CniError {
    /// Code 1: the config's `cniVersion` is not one this plugin speaks.
    #[error("incompatible CNI version {version}")]
    IncompatibleVersion { version: String },
    /// Code 1: GC and STATUS exist only from CNI 1.1.0 on; an older config
    /// asks for a verb its version does not have (libcni's skel does the same).
    #[error("config version {version} does not allow {verb}")]
    VerbNotInVersion { verb: &'static str, version: String },
    /// Code 4: a required CNI_* variable is missing or empty.
    #[error("required environment variable {name} is missing")]
    MissingEnv { name: &'static str },
    /// Code 4: a CNI_* variable is present but not acceptable.
    #[error("environment variable {name} is invalid: {reason}")]
    InvalidEnv { name: &'static str, reason: String },
    /// Code 3: the container's network namespace does not exist, and
    /// nothing was allocated for it, so there is nothing to clean up.
    #[error("network namespace {netns} does not exist: {reason}")]
    ContainerUnknown { netns: String, reason: String },
    /// Code 5: a local I/O failure outside the dataplane (reading stdin,
    /// starting the async runtime).
    #[error("cannot {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Code 6: stdin is not JSON.
    #[error("network configuration is not valid JSON: {0}")]
    Decode(#[source] serde_json::Error),
    /// Code 7: JSON, but not a valid Weft network configuration.
    #[error("invalid network configuration: {reason}")]
    InvalidConfig { reason: String },
    /// Code 11: the agent cannot be reached, is not ready or timed out; the
    /// runtime should retry later (nothing was changed, or it was undone).
    #[error("weft-agent at {socket} is unavailable: {reason}")]
    AgentUnavailable { socket: String, reason: String },
    /// Code 50 (STATUS only): the plugin cannot serve ADD now.
    #[error("weft is not ready: {reason}")]
    NotReady { reason: String },
    /// Code 100: the node's pod CIDR has no free address.
    #[error("no free address in the node's pod CIDR: {message}")]
    AddressesExhausted { message: String },
    /// Code 101: CNI_IFNAME already exists in the container (the spec
    /// requires an error; it names no code).
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists { ifname: String, netns: String },
    /// Code 102: programming the kernel (links, addresses, routes) failed.
    #[error("dataplane: {0}")]
    Dataplane(#[from] weft_dataplane::link::LinkError),
    /// Code 103: the agent refused or failed a request for a reason other
    /// than availability or address exhaustion.
    #[error("weft-agent {rpc} failed ({code}): {message}")]
    Agent {
        rpc: &'static str,
        code: String,
        message: String,
    },
    /// Code 104: CHECK found the attachment not as ADD left it.
    #[error("check failed: {reason}")]
    CheckFailed { reason: String },
}

impl CniError {
    /// The CNI error code of this failure.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::VerbNotInVersion { .. } => 1,
            CniError::ContainerUnknown { .. } => 3,
            CniError::MissingEnv { .. } | CniError::InvalidEnv { .. } => 4,
            CniError::Io { .. } => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig { .. } => 7,
            CniError::AgentUnavailable { .. } => 11,
            CniError::NotReady { .. } => 50,
            CniError::AddressesExhausted { .. } => 100,
            CniError::InterfaceExists { .. } => 101,
            CniError::Dataplane(_) => 102,
            CniError::Agent { .. } => 103,
            CniError::CheckFailed { .. } => 104,
        }
    }

    /// Short message for the `msg` field: the kind of failure.
    pub fn summary(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } => "incompatible CNI version",
            CniError::VerbNotInVersion { .. } => "verb not supported by the config's CNI version",
            CniError::ContainerUnknown { .. } => "container unknown or does not exist",
            CniError::MissingEnv { .. } | CniError::InvalidEnv { .. } => {
                "invalid necessary environment variables"
            }
            CniError::Io { .. } => "I/O failure",
            CniError::Decode(_) => "failed to decode content",
            CniError::InvalidConfig { .. } => "invalid network config",
            CniError::AgentUnavailable { .. } => "try again later",
            CniError::NotReady { .. } => "plugin not available",
            CniError::AddressesExhausted { .. } => "no free pod address",
            CniError::InterfaceExists { .. } => "interface already exists",
            CniError::Dataplane(_) => "dataplane programming failed",
            CniError::Agent { .. } => "weft-agent request failed",
            CniError::CheckFailed { .. } => "attachment not as expected",
        }
    }

    /// Shorthand for [`CniError::InvalidConfig`].
    pub fn config(reason: impl Into<String>) -> Self {
        CniError::InvalidConfig {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`CniError::CheckFailed`].
    pub fn check(reason: impl Into<String>) -> Self {
        CniError::CheckFailed {
            reason: reason.into(),
        }
    }

    /// The error JSON the spec prescribes, for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorJson<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: String,
        }
        serde_json::to_value(ErrorJson {
            cni_version,
            code: self.code(),
            msg: self.summary(),
            details: self.to_string(),
        })
        .expect("error JSON always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let err = CniError::MissingEnv { name: "CNI_IFNAME" };
        let json = err.to_json("1.0.0");
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 4,
                "msg": "invalid necessary environment variables",
                "details": "required environment variable CNI_IFNAME is missing",
            })
        );
    }

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(
            CniError::IncompatibleVersion {
                version: "0.3.1".into()
            }
            .code(),
            1
        );
        assert_eq!(CniError::config("x").code(), 7);
        assert_eq!(
            CniError::AgentUnavailable {
                socket: "/s".into(),
                reason: "r".into()
            }
            .code(),
            11
        );
        assert_eq!(CniError::NotReady { reason: "r".into() }.code(), 50);
        assert!(CniError::check("x").code() >= 100);
    }
}
