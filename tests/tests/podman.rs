//! A real libcni runtime: podman (CNI backend) inside a lab node's network
//! namespace starts a container on the Weft network; the container gets its
//! address from the node's agent and reaches a pod on another node. Needs
//! root, podman, runc and busybox-static (scripts/install-deps.sh).
//!
//! Podman runs under `nsenter --net` (not `ip netns exec`, which remounts
//! /sys and hides the cgroup filesystem runc needs), on a store of the
//! test's own ([`PodmanStore`]) with its own network config directory, so
//! the machine's own podman setup is neither used nor changed.

use std::path::Path;
use std::process::{Command, Output};

use weft_tests::podman::PodmanStore;

use weft_tests::*;

struct Podman {
    store: PodmanStore,
    node_netns: String,
}

impl Podman {
    fn new(lab: &Lab, node: &str) -> Podman {
        let node_netns = format!("/run/netns/{}", lab.node(node).netns);
        let wrapper = vec!["nsenter".into(), format!("--net={node_netns}")];
        let store = PodmanStore::new("weft-podman-", wrapper, |root| {
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
                bin_dir().display(),
                root.join("net.d").display()
            )
        });
        std::fs::create_dir_all(store.path().join("net.d")).unwrap();
        // libcni in podman 4.3 speaks CNI up to 1.0.0.
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [{"type": "weft-cni", "agentSocket": lab.socket(node)}]
        });
        std::fs::write(
            store.path().join("net.d/weft.conflist"),
            conflist.to_string(),
        )
        .unwrap();
        Podman { store, node_netns }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.store.podman(args)
    }

    /// An image made offline from Debian's busybox-static.
    fn import_busybox(&self) {
        let rootfs = self.store.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox-static is installed");
        let tar = self.store.path().join("busybox.tar");
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
