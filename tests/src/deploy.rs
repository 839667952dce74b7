//! What the tests of deploy/ and of the image read: the manifests a user
//! applies (deploy/'s top level, every document), the image name the
//! Makefile defines once, and the flags the real weft-agent accepts (from
//! its `--help`, so a manifest is checked against the binary it runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every file `kubectl apply -f deploy/` reads (the
/// top level's .yaml, .yml and .json files, not subdirectories), with the
/// file it came from, in kubectl's order.
pub fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a manifest is readable");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("deploy/{name} is not valid YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The one object of `kind` named `name` in deploy/, as the API's type.
pub fn manifest<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> T {
    let found: Vec<Value> = manifests()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "deploy/ must hold one {kind} {name}");
    serde_json::from_value(found.into_iter().next().unwrap())
        .unwrap_or_else(|e| panic!("{kind} {name} in deploy/: {e}"))
}

/// A variable the Makefile sets with `NAME := value`.
pub fn makefile_var(name: &str) -> String {
    let makefile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Makefile");
    let text = std::fs::read_to_string(&makefile).expect("the Makefile is readable");
    text.lines()
        .find_map(|l| {
            let (var, value) = l.split_once(":=")?;
            (var.trim() == name).then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("the Makefile sets no {name} :="))
}

/// One flag of a program's `--help`: its environment twin and default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flag {
    pub env: Option<String>,
    pub default: Option<String>,
    /// The values clap accepts, when it lists them (`Possible values:`).
    pub possible: Vec<String>,
}

/// The long flags of `program --help` (clap's long help: a `--name` line,
/// its description, `- value: what it means` lines under `Possible
/// values:`, then `[env: NAME=]` and `[default: VALUE]` lines).
pub fn help_flags(program: &Path) -> BTreeMap<String, Flag> {
    let out = Command::new(program)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{} --help: {e}", program.display()));
    assert!(out.status.success(), "{} --help failed", program.display());
    parse_help(&String::from_utf8_lossy(&out.stdout))
}

fn parse_help(help: &str) -> BTreeMap<String, Flag> {
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag_line = line.starts_with(' ')
            && (trimmed.starts_with("--")
                || (trimmed.starts_with('-') && trimmed.get(2..4) == Some(", ")));
        if flag_line {
            let long = trimmed
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--"))
                .map(|w| w.trim_end_matches(',').to_string());
            if let Some(long) = &long {
                flags.insert(long.clone(), Flag::default());
            }
            current = long;
        } else if let Some(flag) = current.as_ref().and_then(|c| flags.get_mut(c)) {
            if let Some(env) = trimmed.strip_prefix("[env: ") {
                flag.env = env.split('=').next().map(str::to_string);
            } else if let Some(default) = trimmed.strip_prefix("[default: ") {
                flag.default = default.strip_suffix(']').map(str::to_string);
            } else if let Some(value) = trimmed.strip_prefix("- ") {
                let value = value.split(':').next().unwrap_or_default().trim();
                flag.possible.push(value.to_string());
            }
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_long_help_is_read() {
        let help = "Usage: x\n\nOptions:\n      --node-name <NODE_NAME>\n          This node's name [default: not this]\n          \n          [env: WEFT_NODE_NAME=]\n\n      --state-dir <STATE_DIR>\n          Where\n          \n          [env: WEFT_STATE_DIR=]\n          [default: /var/lib/weft]\n\n      --routing <ROUTING>\n          Where routes come from\n\n          Possible values:\n          - bgp:    Over BGP: every node\n          - static: From the node records\n          \n          [default: bgp]\n\n  -h, --help\n          Print help\n";
        let flags = parse_help(help);
        assert_eq!(
            flags["node-name"],
            Flag {
                env: Some("WEFT_NODE_NAME".into()),
                default: None,
                possible: vec![],
            }
        );
        assert_eq!(flags["state-dir"].default.as_deref(), Some("/var/lib/weft"));
        assert_eq!(flags["routing"].possible, ["bgp", "static"]);
        assert!(flags.contains_key("help"));
        assert_eq!(flags.len(), 4);
    }
}
