//! `weftctl install-cni`: what the DaemonSet's init container does on every
//! node before the agent starts. It puts the weft-cni binary into the
//! node's CNI plugin directory and Weft's network config into the node's
//! CNI config directory, both through a temporary file in the same
//! directory and a rename, so the container runtime (which rescans
//! /etc/cni/net.d) never reads half a config and a running weft-cni is never
//! overwritten in place. A config weft-cni would refuse is refused here,
//! naming the field, before anything is written. Running it again with the
//! same inputs changes nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use weft_cni::config::{CniVersion, NetConf};

/// The plugin's `type`, which is also its file name in the plugin directory.
pub const PLUGIN: &str = "weft-cni";

/// What to install and where.
#[derive(Clone, Debug)]
pub struct Install {
    /// The weft-cni binary to copy.
    pub cni_bin: PathBuf,
    /// The network config file; its file name is kept in `cni_conf_dir`.
    pub cni_config: PathBuf,
    /// The node's CNI plugin directory (`/opt/cni/bin` on the host).
    pub cni_bin_dir: PathBuf,
    /// The node's CNI config directory (`/etc/cni/net.d` on the host).
    pub cni_conf_dir: PathBuf,
}

/// Whether a file had to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Written,
    Unchanged,
}

/// What [`install`] did, for the init container's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub plugin: PathBuf,
    pub plugin_change: Change,
    pub config: PathBuf,
    pub config_change: Change,
    /// Config files in the directory that the runtime reads before ours
    /// (it uses the first in lexical order): Weft is not the pod network
    /// while they are there.
    pub shadowed_by: Vec<String>,
}

impl Installed {
    pub fn render(&self) -> String {
        let word = |c: Change| match c {
            Change::Written => "installed",
            Change::Unchanged => "unchanged",
        };
        let mut out = format!(
            "{} {}\n{} {}\n",
            word(self.plugin_change),
            self.plugin.display(),
            word(self.config_change),
            self.config.display()
        );
        if !self.shadowed_by.is_empty() {
            out += &format!(
                "warning: the runtime uses the first network config in lexical order, and {} comes before {}\n",
                self.shadowed_by.join(", "),
                self.config.display()
            );
        }
        out
    }
}

/// The weft-cni next to the running weftctl (both are in the image's
/// /usr/local/bin).
pub fn default_cni_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding weftctl's own path")?;
    Ok(exe.with_file_name(PLUGIN))
}

/// Validates the config, then installs the plugin and the config.
pub fn install(install: &Install) -> Result<Installed> {
    let name = install
        .cni_config
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", install.cni_config.display()))?
        .to_string();
    let config = fs::read(&install.cni_config)
        .with_context(|| format!("reading {}", install.cni_config.display()))?;
    validate_network_config(&name, &config)
        .with_context(|| format!("{} is refused", install.cni_config.display()))?;
    let binary = fs::read(&install.cni_bin)
        .with_context(|| format!("reading the plugin {}", install.cni_bin.display()))?;
    if !binary.starts_with(b"\x7fELF") {
        bail!(
            "{} is not an executable (no ELF header)",
            install.cni_bin.display()
        );
    }

    // The plugin first: a config naming a plugin the runtime cannot find
    // yet would fail every pod until it arrives.
    let plugin_change = install_file(&install.cni_bin_dir, PLUGIN, &binary, 0o755)?;
    let config_change = install_file(&install.cni_conf_dir, &name, &config, 0o644)?;
    Ok(Installed {
        plugin: install.cni_bin_dir.join(PLUGIN),
        plugin_change,
        config: install.cni_conf_dir.join(&name),
        config_change,
        shadowed_by: configs_before(&install.cni_conf_dir, &name)?,
    })
}

/// Checks a network config file as the runtime and weft-cni will read it:
/// by its extension a single plugin config (`.conf`, `.json`) or a list
/// (`.conflist`), whose first plugin is weft-cni (the plugin that creates the
/// pod's interface comes first in a chain). weft-cni's own parser judges
/// its part, given what libcni injects (`cniVersion` and `name` of the list).
pub fn validate_network_config(file_name: &str, bytes: &[u8]) -> Result<()> {
    let list = match Path::new(file_name).extension().and_then(|e| e.to_str()) {
        Some("conflist") => true,
        Some("conf" | "json") => false,
        _ => bail!(
            "the file name {file_name:?} must end in .conflist, .conf or .json (the only files a runtime reads)"
        ),
    };
    let value: Value =
        serde_json::from_slice(bytes).context("the network config is not valid JSON")?;
    let Value::Object(obj) = value else {
        bail!("the network config is not a JSON object");
    };
    check_version(&obj)?;
    if !list {
        check_type(&obj, "type")?;
        return parse_plugin(&obj, None);
    }
    if obj.contains_key("type") {
        bail!("field type belongs in plugins[], not at the top of a .conflist");
    }
    match obj.get("name") {
        Some(Value::String(_)) => {}
        Some(_) => bail!("field name is not a string"),
        None => bail!("field name is missing"),
    }
    let plugins = match obj.get("plugins") {
        Some(Value::Array(plugins)) if !plugins.is_empty() => plugins,
        Some(Value::Array(_)) => bail!("field plugins is empty"),
        Some(_) => bail!("field plugins is not a list"),
        None => bail!("field plugins is missing"),
    };
    for (i, plugin) in plugins.iter().enumerate() {
        let Value::Object(plugin) = plugin else {
            bail!("field plugins[{i}] is not an object");
        };
        let field = format!("plugins[{i}].type");
        match plugin.get("type") {
            Some(Value::String(t)) if !t.is_empty() => {}
            Some(Value::String(_)) => bail!("field {field} is empty"),
            Some(_) => bail!("field {field} is not a string"),
            None => bail!("field {field} is missing"),
        }
    }
    let first = plugins[0].as_object().expect("checked above");
    check_type(first, "plugins[0].type")?;
    // What libcni hands the plugin: its own object with the list's
    // cniVersion and name.
    let mut conf = first.clone();
    for key in ["cniVersion", "name"] {
        conf.insert(key.into(), obj[key].clone());
    }
    parse_plugin(&conf, Some("plugins[0]"))
}

/// `cniVersion`: present and one weft-cni speaks.
fn check_version(obj: &Map<String, Value>) -> Result<()> {
    let supported = || {
        CniVersion::SUPPORTED
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match obj.get("cniVersion") {
        Some(Value::String(v)) if CniVersion::parse(v).is_some() => Ok(()),
        Some(Value::String(v)) => bail!(
            "field cniVersion {v:?} is not one weft-cni speaks ({})",
            supported()
        ),
        Some(_) => bail!("field cniVersion is not a string"),
        None => bail!("field cniVersion is missing"),
    }
}

/// `field` names weft-cni.
fn check_type(obj: &Map<String, Value>, field: &str) -> Result<()> {
    let key = field.rsplit('.').next().expect("a field name");
    match obj.get(key) {
        Some(Value::String(t)) if t == PLUGIN => Ok(()),
        Some(other) => bail!("field {field} is {other}, not {PLUGIN:?}"),
        None => bail!("field {field} is missing"),
    }
}

/// weft-cni's parser on one plugin's config; `location` says where the
/// plugin sits in a list.
fn parse_plugin(conf: &Map<String, Value>, location: Option<&str>) -> Result<()> {
    let bytes = serde_json::to_vec(conf).expect("a JSON object serializes");
    NetConf::parse(&bytes)
        .map(|_| ())
        .map_err(|e| match location {
            Some(at) => anyhow::anyhow!("{at}: weft-cni refuses it: {e}"),
            None => anyhow::anyhow!("weft-cni refuses it: {e}"),
        })
}

/// Writes `content` to `dir/name` with `mode` unless it is there already:
/// a temporary file in the same directory (hidden, and with a suffix no
/// runtime reads), flushed to disk, then renamed over the old one.
fn install_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<Change> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(name);
    if let Ok(meta) = fs::metadata(&dest)
        && meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && fs::read(&dest).is_ok_and(|old| old == content)
    {
        return Ok(Change::Unchanged);
    }
    let tmp = dir.join(format!(".{name}.weft-tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&tmp, &dest)?;
        // The rename itself reaches the disk with the directory.
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", dest.display()));
    }
    Ok(Change::Written)
}

/// Network config files in `dir` that sort before `name`.
fn configs_before(dir: &Path, name: &str) -> Result<Vec<String>> {
    let mut before: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.as_str() < name
                && [".conf", ".conflist", ".json"]
                    .iter()
                    .any(|ext| n.ends_with(ext))
        })
        .collect();
    before.sort();
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-cni","agentSocket":"/run/weft/agent.sock","timeoutSeconds":10}]}"#;

    fn refused(name: &str, config: &str) -> String {
        format!(
            "{:#}",
            validate_network_config(name, config.as_bytes()).expect_err(config)
        )
    }

    #[test]
    fn the_lists_and_single_configs_weft_cni_reads_are_accepted() {
        validate_network_config("10-weft.conflist", LIST.as_bytes()).unwrap();
        validate_network_config(
            "10-weft.conf",
            br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}"#,
        )
        .unwrap();
        // Chained plugins after weft-cni are the runtime's business.
        validate_network_config(
            "10-weft.conflist",
            br#"{"cniVersion":"0.4.0","name":"weft","plugins":[{"type":"weft-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let list = |plugins: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"weft","plugins":{plugins}}}"#)
        };
        for (name, config, field) in [
            (
                "10-weft.yaml",
                LIST.to_string(),
                ".conflist, .conf or .json",
            ),
            ("10-weft.conflist", "{".into(), "not valid JSON"),
            ("10-weft.conflist", "[]".into(), "not a JSON object"),
            (
                "10-weft.conflist",
                r#"{"name":"weft","plugins":[{"type":"weft-cni"}]}"#.into(),
                "field cniVersion is missing",
            ),
            (
                "10-weft.conflist",
                LIST.replace("1.0.0", "0.3.1"),
                "field cniVersion \"0.3.1\"",
            ),
            (
                "10-weft.conflist",
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"weft-cni"}]}"#.into(),
                "field name is missing",
            ),
            (
                "10-weft.conflist",
                r#"{"cniVersion":"1.0.0","name":"weft"}"#.into(),
                "field plugins is missing",
            ),
            ("10-weft.conflist", list("[]"), "field plugins is empty"),
            ("10-weft.conflist", list("[42]"), "field plugins[0] is not"),
            (
                "10-weft.conflist",
                list(r#"[{"type":"weft-cni"},{"mtu":1400}]"#),
                "field plugins[1].type is missing",
            ),
            (
                "10-weft.conflist",
                list(r#"[{"type":"bridge"},{"type":"weft-cni"}]"#),
                "field plugins[0].type is \"bridge\"",
            ),
            (
                "10-weft.conflist",
                list(r#"[{"type":"weft-cni","agentSocket":"run/weft.sock"}]"#),
                "plugins[0]: weft-cni refuses it: invalid network configuration: agentSocket \"run/weft.sock\" is not an absolute path",
            ),
            (
                "10-weft.conflist",
                list(r#"[{"type":"weft-cni","timeoutSeconds":"10"}]"#),
                "field timeoutSeconds",
            ),
            (
                "10-weft.conflist",
                r#"{"cniVersion":"1.0.0","name":"-weft","plugins":[{"type":"weft-cni"}]}"#.into(),
                "network name \"-weft\"",
            ),
            (
                "10-weft.conf",
                r#"{"cniVersion":"1.0.0","name":"weft","type":"bridge"}"#.into(),
                "field type is \"bridge\"",
            ),
            (
                "10-weft.conf",
                r#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","agentSocket":7}"#.into(),
                "field agentSocket",
            ),
        ] {
            let e = refused(name, &config);
            assert!(e.contains(field), "{name} {config}: {e:?} lacks {field:?}");
        }
    }
}
