//! podman with a storage, run directory and containers.conf of a test's
//! own, in a temporary directory, so the machine's podman setup is neither
//! used nor changed. On these machines podman runs containers only with
//! runc and cgroupfs (crun fails on the hybrid cgroup layout), and logs
//! events to a file (no journald). The vfs storage driver copies layers
//! instead of mounting overlays: nothing to unmount but the containers'
//! own mounts. Containers left behind are removed when it drops.

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub struct PodmanStore {
    dir: tempfile::TempDir,
    /// What podman runs under, e.g. `nsenter --net=...` for a lab node.
    wrapper: Vec<String>,
}

impl PodmanStore {
    /// A new store; `wrapper` prefixes every podman command, `conf` adds
    /// to containers.conf (e.g. a `[network]` table; given the store's
    /// directory).
    pub fn new(
        prefix: &str,
        wrapper: Vec<String>,
        conf: impl FnOnce(&Path) -> String,
    ) -> PodmanStore {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        let conf = conf(dir.path());
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "{conf}\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            ),
        )
        .expect("containers.conf is written");
        PodmanStore { dir, wrapper }
    }

    /// The store's directory, for files a test keeps beside it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `podman ARGS` on this store, its output whatever the exit code.
    pub fn podman(&self, args: &[&str]) -> Output {
        let root = self.dir.path();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg("podman");
                cmd
            }
            None => Command::new("podman"),
        };
        cmd.arg("--root")
            .arg(root.join("storage"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("TMPDIR", root)
            .stdin(Stdio::null())
            .output()
            .expect("podman runs")
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        // Containers are --rm; this removes anything a failure left behind.
        let _ = self.podman(&["rm", "--all", "--force"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("storage"))
            .output();
    }
}
