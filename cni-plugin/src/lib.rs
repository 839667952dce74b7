//! weft-cni: the CNI plugin of Weft (CNI spec 1.1.0; also 1.0.0 and 0.4.0).
//!
//! The pure core parses the environment ([`env`]) and the network
//! configuration ([`config`]), renders results ([`result`]) and errors
//! ([`error`]) and decides CHECK ([`check`]). The shells are netlink
//! (`weft_dataplane::link`) and the agent's gRPC API ([`agent`]); [`verbs`]
//! drives them, [`run`] ties one invocation together.

pub mod agent;
pub mod check;
pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod verbs;

use std::io::Read;

use serde_json::Value;

use crate::config::{CniVersion, NetConf};
use crate::env::{CniEnv, Command};
use crate::error::CniError;

/// What one invocation prints on stdout and how it exits.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// The result or error JSON; None for verbs that print nothing.
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

impl Outcome {
    fn success(stdout: Option<Value>) -> Self {
        Outcome {
            stdout,
            exit_code: 0,
        }
    }

    fn failure(err: &CniError, version: CniVersion) -> Self {
        tracing::error!(code = err.code(), error = %err, "failed");
        Outcome {
            stdout: Some(err.to_json(version.as_str())),
            exit_code: 1,
        }
    }
}

/// Runs one invocation: `var` looks up the environment, `stdin` holds the
/// network configuration (not read for VERSION).
pub fn run(var: impl Fn(&str) -> Option<String>, mut stdin: impl Read) -> Outcome {
    let env = CniEnv::parse(var);
    if let Ok(CniEnv {
        command: Command::Version,
        ..
    }) = env
    {
        return Outcome::success(Some(config::version_reply()));
    }
    let mut bytes = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut bytes) {
        return Outcome::failure(
            &CniError::Io {
                context: "read the network configuration from stdin",
                source: e,
            },
            CniVersion::LATEST,
        );
    }
    let version = NetConf::version_hint(&bytes);
    let env = match env {
        Ok(env) => env,
        Err(e) => return Outcome::failure(&e, version),
    };
    let conf = match NetConf::parse(&bytes) {
        Ok(conf) => conf,
        Err(e) => return Outcome::failure(&e, version),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Outcome::failure(
                &CniError::Io {
                    context: "start the async runtime",
                    source: e,
                },
                version,
            );
        }
    };
    match runtime.block_on(dispatch(&env, &conf)) {
        Ok(stdout) => Outcome::success(stdout),
        Err(e) => Outcome::failure(&e, conf.cni_version),
    }
}

async fn dispatch(env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let attachment = || {
        env.attachment.as_ref().ok_or(CniError::MissingEnv {
            name: "CNI_CONTAINERID",
        })
    };
    tracing::info!(command = env.command.as_str(), network = %conf.name, attachment = ?env.attachment, "invoked");
    match env.command {
        Command::Add => verbs::add(attachment()?, conf).await.map(Some),
        Command::Del => verbs::del(attachment()?, conf).await.map(|()| None),
        Command::Check => verbs::check(attachment()?, conf).await.map(|()| None),
        Command::Gc => verbs::gc(conf).await.map(|()| None),
        Command::Status => verbs::status(conf).await.map(|()| None),
        Command::Version => Ok(Some(config::version_reply())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(env: &[(&str, &str)], stdin: &str) -> Outcome {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(
            |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            stdin.as_bytes(),
        )
    }

    #[test]
    fn version_needs_no_config() {
        let out = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(
            out,
            Outcome {
                stdout: Some(config::version_reply()),
                exit_code: 0
            }
        );
    }

    #[test]
    fn env_errors_speak_the_config_version() {
        let out = run_with(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.4.0","name":"n","type":"weft-cni"}"#,
        );
        assert_eq!(out.exit_code, 1);
        let json = out.stdout.unwrap();
        assert_eq!(
            (json["code"].as_u64(), json["cniVersion"].as_str()),
            (Some(4), Some("0.4.0"))
        );
    }

    #[test]
    fn config_errors_come_after_env_errors() {
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        let code = |stdin: &str| {
            run_with(&env, stdin).stdout.unwrap()["code"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(code("not json"), 6);
        assert_eq!(code(r#"{"cniVersion":"1.1.0"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"0.1.0","name":"n","type":"t"}"#), 1);
        assert_eq!(
            run_with(&[("CNI_COMMAND", "ADD")], "not json")
                .stdout
                .unwrap()["code"],
            4
        );
    }
}
