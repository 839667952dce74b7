//! `weftctl install-cni`, the real binary, on a node's directories made in
//! a temporary directory (no root needed): it installs the plugin and the
//! config, leaves them alone when they are already right, replaces them by
//! rename when they change, and refuses a bad config without writing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");
const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-cni","agentSocket":"/run/weft/agent.sock"}]}"#;

/// A node's CNI directories and the image's files, all in one temp dir.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(node.path("image/bin")).unwrap();
        fs::create_dir_all(node.path("image/config")).unwrap();
        // Any ELF executable stands in for weft-cni: weftctl itself.
        fs::copy(WEFTCTL, node.path("image/bin/weft-cni")).unwrap();
        node.config(CONFLIST);
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, text: &str) {
        fs::write(self.path("image/config/10-weft.conflist"), text).unwrap();
    }

    /// `weftctl install-cni` with the node's directories and `extra` flags.
    fn install_with(&self, weftctl: &Path, extra: &[&str]) -> Output {
        Command::new(weftctl)
            .arg("install-cni")
            .arg("--cni-config")
            .arg(self.path("image/config/10-weft.conflist"))
            .arg("--cni-bin-dir")
            .arg(self.path("host/opt/cni/bin"))
            .arg("--cni-conf-dir")
            .arg(self.path("host/etc/cni/net.d"))
            .args(extra)
            .output()
            .unwrap()
    }

    fn install(&self) -> Output {
        let bin = self.path("image/bin/weft-cni");
        self.install_with(Path::new(WEFTCTL), &["--cni-bin", bin.to_str().unwrap()])
    }

    fn installed_plugin(&self) -> PathBuf {
        self.path("host/opt/cni/bin/weft-cni")
    }

    fn installed_config(&self) -> PathBuf {
        self.path("host/etc/cni/net.d/10-weft.conflist")
    }

    /// Every file name in the node's two CNI directories.
    fn host_files(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in ["host/opt/cni/bin", "host/etc/cni/net.d"] {
            if let Ok(entries) = fs::read_dir(self.path(dir)) {
                names.extend(entries.map(|e| e.unwrap().file_name().into_string().unwrap()));
            }
        }
        names.sort();
        names
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "install-cni failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn installs_then_leaves_alone_then_replaces_by_rename() {
    let node = Node::new();
    let out = ok(&node.install());
    assert!(
        out.contains(&format!("installed {}", node.installed_plugin().display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("installed {}", node.installed_config().display())),
        "{out}"
    );
    assert_eq!(
        fs::read(node.installed_plugin()).unwrap(),
        fs::read(WEFTCTL).unwrap()
    );
    assert_eq!(
        fs::read_to_string(node.installed_config()).unwrap(),
        CONFLIST
    );
    assert_eq!(mode(&node.installed_plugin()), 0o755);
    assert_eq!(mode(&node.installed_config()), 0o644);
    assert_eq!(node.host_files(), ["10-weft.conflist", "weft-cni"]);

    // Again: nothing is rewritten (same inodes).
    let inodes = |node: &Node| {
        [node.installed_plugin(), node.installed_config()].map(|p| fs::metadata(p).unwrap().ino())
    };
    let before = inodes(&node);
    let out = ok(&node.install());
    assert_eq!(out.matches("unchanged").count(), 2, "{out}");
    assert_eq!(inodes(&node), before);

    // A changed config (a new ConfigMap) and a plugin whose mode was lost
    // are replaced by new files renamed into place; no temporary is left.
    let changed = CONFLIST.replace("agent.sock", "weft.sock");
    node.config(&changed);
    fs::set_permissions(node.installed_plugin(), fs::Permissions::from_mode(0o644)).unwrap();
    let out = ok(&node.install());
    assert!(
        out.contains(&format!("installed {}", node.installed_config().display())),
        "{out}"
    );
    let after = inodes(&node);
    assert_ne!(after[0], before[0], "the plugin is a new file");
    assert_ne!(after[1], before[1], "the config is a new file");
    assert_eq!(
        fs::read_to_string(node.installed_config()).unwrap(),
        changed
    );
    assert_eq!(mode(&node.installed_plugin()), 0o755);
    assert_eq!(node.host_files(), ["10-weft.conflist", "weft-cni"]);
}

#[test]
fn a_bad_config_is_refused_naming_the_field_and_nothing_is_written() {
    let node = Node::new();
    node.config(r#"{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-cni","timeoutSeconds":0}]}"#);
    let out = node.install();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("plugins[0]") && stderr.contains("timeoutSeconds 0"),
        "{stderr}"
    );
    assert!(node.host_files().is_empty(), "{:?}", node.host_files());

    // A plugin that is not an executable is refused too.
    node.config(CONFLIST);
    fs::write(node.path("image/bin/weft-cni"), "#!/bin/sh\n").unwrap();
    let out = node.install();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no ELF header"),
        "{stderr}"
    );
    assert!(node.host_files().is_empty(), "{:?}", node.host_files());
}

#[test]
fn the_plugin_next_to_weftctl_is_the_default_and_earlier_configs_are_reported() {
    let node = Node::new();
    // weftctl and weft-cni side by side, as in the image.
    let weftctl = node.path("image/bin/weftctl");
    fs::copy(WEFTCTL, &weftctl).unwrap();
    fs::create_dir_all(node.path("host/etc/cni/net.d")).unwrap();
    fs::write(node.path("host/etc/cni/net.d/05-other.conf"), "{}").unwrap();
    let out = ok(&node.install_with(&weftctl, &[]));
    assert_eq!(
        fs::read(node.installed_plugin()).unwrap(),
        fs::read(node.path("image/bin/weft-cni")).unwrap()
    );
    assert!(
        out.contains("warning:") && out.contains("05-other.conf comes before"),
        "{out}"
    );
}
