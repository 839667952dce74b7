//! The CNI_* environment of one invocation, parsed and validated.
//!
//! Which variables each verb requires follows the spec's per-operation
//! parameter lists (CNI 1.1.0, section 2): ADD and CHECK need CNI_CONTAINERID,
//! CNI_NETNS and CNI_IFNAME; DEL needs CNI_CONTAINERID and CNI_IFNAME (the
//! namespace may be gone); GC, STATUS and VERSION need only CNI_COMMAND.
//! CNI_PATH is optional everywhere in the spec, and weft-cni delegates to no
//! other plugin, so it is never required.

use std::path::PathBuf;

use crate::error::CniError;

/// A CNI verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    fn parse(value: &str) -> Result<Self, CniError> {
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::InvalidEnv {
                    name: "CNI_COMMAND",
                    reason: format!("unknown command {other:?}"),
                });
            }
        })
    }

    /// The verb as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// One attachment: the container and the interface name inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentEnv {
    pub container_id: String,
    pub ifname: String,
    /// CNI_NETNS; None only for DEL, where the namespace may be gone.
    pub netns: Option<PathBuf>,
    /// K8S_POD_NAME from CNI_ARGS, empty outside Kubernetes.
    pub pod_name: String,
    /// K8S_POD_NAMESPACE from CNI_ARGS, empty outside Kubernetes.
    pub pod_namespace: String,
}

/// The parsed environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<AttachmentEnv>,
}

impl CniEnv {
    /// Parses the environment through `var` (a lookup such as
    /// `std::env::var`, or a map in tests). Empty counts as missing.
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |name: &'static str| var(name).filter(|v| !v.is_empty());
        let command = Command::parse(&get("CNI_COMMAND").ok_or(CniError::MissingEnv {
            name: "CNI_COMMAND",
        })?)?;
        let attachment = match command {
            Command::Add | Command::Check | Command::Del => {
                let container_id = get("CNI_CONTAINERID").ok_or(CniError::MissingEnv {
                    name: "CNI_CONTAINERID",
                })?;
                validate_container_id(&container_id)?;
                let ifname =
                    get("CNI_IFNAME").ok_or(CniError::MissingEnv { name: "CNI_IFNAME" })?;
                validate_ifname(&ifname)?;
                let netns = match (command, get("CNI_NETNS")) {
                    (Command::Del, netns) => netns.map(PathBuf::from),
                    (_, Some(netns)) => Some(PathBuf::from(netns)),
                    (_, None) => return Err(CniError::MissingEnv { name: "CNI_NETNS" }),
                };
                if let Some(path) = netns.as_ref().filter(|p| !p.is_absolute()) {
                    return Err(CniError::InvalidEnv {
                        name: "CNI_NETNS",
                        reason: format!("{} is not an absolute path", path.display()),
                    });
                }
                let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
                let arg = |key: &str| {
                    args.iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                Some(AttachmentEnv {
                    container_id,
                    ifname,
                    netns,
                    pod_name: arg("K8S_POD_NAME"),
                    pod_namespace: arg("K8S_POD_NAMESPACE"),
                })
            }
            Command::Version | Command::Gc | Command::Status => None,
        };
        Ok(CniEnv {
            command,
            attachment,
        })
    }
}

/// Container ids start with an alphanumeric character, followed by
/// alphanumerics, `_`, `.` or `-` (the spec's rule for CNI_CONTAINERID).
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::InvalidEnv {
            name: "CNI_CONTAINERID",
            reason: format!(
                "{id:?} must start with a letter or digit, then letters, digits, '_', '.' or '-'"
            ),
        })
    }
}

/// Interface names: at most 15 bytes (IFNAMSIZ - 1), not `.` or `..`, no
/// `/`, `:` or whitespace (the spec's rule for CNI_IFNAME, which is the
/// kernel's).
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("may not be '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("may not contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CniError::InvalidEnv {
            name: "CNI_IFNAME",
            reason: format!("{name:?} {reason}"),
        }),
        None => Ok(()),
    }
}

/// CNI_ARGS: `KEY=VALUE` pairs separated by `;`. Unknown keys are kept (and
/// ignored by the caller); a pair without `=` is an error.
fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::InvalidEnv {
                    name: "CNI_ARGS",
                    reason: format!("{pair:?} is not KEY=VALUE"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::parse(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123",
        ),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != name).collect()
    }

    fn code(r: Result<CniEnv, CniError>) -> u32 {
        r.expect_err("should fail").code()
    }

    #[test]
    fn add_env_parses_pod_identity_from_cni_args() {
        let parsed = env(ADD).unwrap();
        assert_eq!(parsed.command, Command::Add);
        let att = parsed.attachment.unwrap();
        assert_eq!(att.container_id, "abc123");
        assert_eq!(att.ifname, "eth0");
        assert_eq!(
            att.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/pod"))
        );
        assert_eq!(att.pod_name, "web-0");
        assert_eq!(att.pod_namespace, "default");
    }

    #[test]
    fn cni_path_is_not_required() {
        assert!(env(ADD).is_ok(), "no CNI_PATH in ADD fixture");
    }

    #[test]
    fn missing_variables_are_code_4() {
        assert_eq!(code(env(&[])), 4);
        for name in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert_eq!(code(env(&without(name))), 4, "{name}");
        }
        let mut empty_ifname = without("CNI_IFNAME");
        empty_ifname.push(("CNI_IFNAME", ""));
        assert_eq!(code(env(&empty_ifname)), 4);
    }

    #[test]
    fn del_does_not_need_a_netns() {
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        let parsed = env(&del).unwrap();
        assert_eq!(parsed.attachment.unwrap().netns, None);
    }

    #[test]
    fn check_needs_a_netns() {
        let mut check = without("CNI_NETNS");
        check[0] = ("CNI_COMMAND", "CHECK");
        assert_eq!(code(env(&check)), 4);
    }

    #[test]
    fn invalid_values_are_code_4() {
        let with = |name: &'static str, value: &'static str| {
            let mut e = without(name);
            e.push((name, value));
            e
        };
        assert_eq!(code(env(&with("CNI_COMMAND", "FROB"))), 4);
        assert_eq!(code(env(&with("CNI_CONTAINERID", "-abc"))), 4);
        assert_eq!(code(env(&with("CNI_CONTAINERID", "a/b"))), 4);
        assert_eq!(code(env(&with("CNI_IFNAME", "a-very-long-ifname"))), 4);
        assert_eq!(code(env(&with("CNI_IFNAME", "eth:0"))), 4);
        assert_eq!(code(env(&with("CNI_IFNAME", ".."))), 4);
        assert_eq!(code(env(&with("CNI_NETNS", "run/netns/x"))), 4);
        assert_eq!(code(env(&with("CNI_ARGS", "K8S_POD_NAME"))), 4);
    }

    #[test]
    fn version_gc_status_need_only_the_command() {
        for verb in ["VERSION", "GC", "STATUS"] {
            let parsed = env(&[("CNI_COMMAND", verb)]).unwrap();
            assert_eq!(parsed.command.as_str(), verb);
            assert!(parsed.attachment.is_none());
        }
    }
}
