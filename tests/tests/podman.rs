//! A real libcni runtime: podman (CNI backend) inside a lab node's network
//! namespace starts a container on the Weft network; the container gets its
//! address from the node's agent and reaches a pod on another node. Needs
//! root, podman, runc and busybox-static (scripts/install-deps.sh).
//!
//! Podman runs under `nsenter --net` (not `ip netns exec`, which remounts
//! /sys and hides the cgroup filesystem runc needs), with its own storage,
//! run directory, containers.conf and network config directory, so the
//! machine's own podman setup is neither used nor changed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use weft_tests::*;

struct Podman {
    node_netns: String,
    dir: tempfile::TempDir,
}

impl Podman {
    fn new(lab: &Lab, node: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("weft-podman-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                bin_dir().display(),
                root.join("net.d").display()
            ),
        )
        .unwrap();
        // libcni in podman 4.3 speaks CNI up to 1.0.0.
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [{"type": "weft-cni", "agentSocket": lab.socket(node)}]
        });
        std::fs::write(root.join("net.d/weft.conflist"), conflist.to_string()).unwrap();
        Podman {
            node_netns: format!("/run/netns/{}", lab.node(node).netns),
            dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let root = self.dir.path();
        Command::new("nsenter")
            .arg(format!("--net={}", self.node_netns))
            .arg("podman")
            .arg("--root")
            .arg(root.join("storage"))
            .arg("--runroot")
            .arg(root.join("run"))
            .arg("--network-config-dir")
            .arg(root.join("net.d"))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("TMPDIR", root)
            .stdin(Stdio::null())
            .output()
            .expect("podman runs")
    }

    /// An image made offline from Debian's busybox-static.
    fn import_busybox(&self) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox-static is installed");
        let tar = self.dir.path().join("busybox.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let out = self.run(&[
            "import",
            tar.to_str().unwrap(),
            "localhost/weft-busybox:test",
        ]);
        assert!(out.status.success(), "podman import: {}", show(&out));
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers are --rm; this removes anything a failure left behind.
        let _ = self.run(&["rm", "--all", "--force"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("storage"))
            .output();
    }
}

#[test]
fn podman_container_gets_a_weft_address_and_reaches_another_node() {
    let lab = Lab::up("podman", 2, 1);
    let target = lab.status().pod_on("node2");
    let podman = Podman::new(&lab, "node1");
    podman.import_busybox();
    assert!(Path::new(&podman.node_netns).exists());

    let script = format!(
        "/bin/busybox ip -4 addr show eth0 && /bin/busybox ping -c 3 -W 2 {} && echo REACHED",
        target.address().unwrap()
    );
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "weft",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
        "localhost/weft-busybox:test",
        "/bin/busybox",
        "sh",
        "-c",
        &script,
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "podman run: {}", show(&out));
    assert!(
        text.contains("inet 10.244.1."),
        "the container's address comes from node1's pod CIDR:\n{text}"
    );
    assert!(text.contains("REACHED"), "{text}");

    // --rm made podman call DEL: the agent holds only the lab's own pod again.
    let endpoints = lab.ctl_ok(&["endpoints", "--node", "node1", "--json"]);
    assert_eq!(
        endpoints.matches("10.244.1.").count(),
        1,
        "after DEL only the lab pod remains: {endpoints}"
    );
}
