//! `make image`'s script: the archive it saves holds exactly the three
//! binaries and the glibc files they load, under the name the DaemonSet
//! runs; loaded into podman, and imported into containerd as `kind load
//! image-archive` imports it (each with a storage of the test's own,
//! removed afterwards), each binary runs with no network and answers as the
//! one built here does. Needs root, podman and containerd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use weft_tests::deploy::makefile_var;
use weft_tests::podman::PodmanStore;
use weft_tests::{bin, bin_dir, require_root, show, stdout};

const BINARIES: [&str; 3] = ["weft-agent", "weft-cni", "weftctl"];

/// `podman run` of `command` in `image`: no network, the ulimits these
/// machines allow, `env` set.
fn podman_run(store: &PodmanStore, image: &str, env: &[&str], command: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
    ];
    for e in env {
        args.extend(["--env", e]);
    }
    args.push(image);
    args.extend(command);
    store.podman(&args)
}

/// A containerd of the test's own (root, state and socket in a temporary
/// directory; no CRI), stopped by its pid when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    process: std::process::Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("weft-containerd-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd-ttrpc.sock\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let process = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts (scripts/install-deps.sh installs it)");
        let containerd = Containerd { dir, process };
        weft_tests::eventually(
            "containerd answers",
            std::time::Duration::from_secs(20),
            || {
                let out = containerd.ctr(&["version"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(show(&out))
                }
            },
        );
        containerd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr runs")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.process.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.process.wait();
        // Its runc shims (started with its address) leave once their
        // container is gone; any still there after a while are ended.
        let shims = || -> Vec<i32> {
            let mark = self.dir.path().to_string_lossy().into_owned();
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                    let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                    String::from_utf8_lossy(&cmdline)
                        .contains(&mark)
                        .then_some(pid)
                })
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !shims().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for pid in shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .output();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("state"))
            .output();
    }
}

/// The files a binary loads, as ldd resolves them (the loader included).
fn ldd(binary: &Path) -> BTreeSet<String> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd runs");
    assert!(
        out.status.success(),
        "ldd {}: {}",
        binary.display(),
        show(&out)
    );
    stdout(&out)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// `path`'s bytes inside the tar archive `archive`.
fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(out.status.success(), "{member}: {}", show(&out));
    out.stdout
}

/// The regular files of the archive's one layer.
fn layer_files(archive: &Path, dir: &Path) -> BTreeSet<String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_member(archive, "manifest.json")).unwrap();
    let layers = manifest[0]["Layers"].as_array().expect("Layers");
    assert_eq!(layers.len(), 1, "one layer, from scratch: {manifest}");
    let layer = dir.join("layer.tar");
    std::fs::write(&layer, tar_member(archive, layers[0].as_str().unwrap())).unwrap();
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(&layer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    stdout(&out)
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| format!("/{}", l.split_whitespace().last().unwrap()))
        .collect()
}

#[test]
fn image_holds_the_three_binaries_and_runs_each() {
    require_root();
    let image = makefile_var("IMAGE");
    let dir = tempfile::tempdir().unwrap();
    let archive: PathBuf = dir.path().join("weft-image.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&archive)
        .env("IMAGE", &image)
        .env("WEFT_BIN_DIR", bin_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "build-image.sh: {}", show(&out));

    // Under the name the DaemonSet runs (what kind and ctr import keep).
    let manifest: serde_json::Value =
        serde_json::from_slice(&tar_member(&archive, "manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!([image]));

    // Nothing but the binaries and what they load: no base image.
    let mut want: BTreeSet<String> = BINARIES
        .iter()
        .map(|b| format!("/usr/local/bin/{b}"))
        .collect();
    for b in BINARIES {
        want.extend(ldd(&bin(b)));
    }
    assert_eq!(layer_files(&archive, dir.path()), want);

    let store = PodmanStore::new("weft-image-test-", Vec::new(), |_| String::new());
    let out = store.podman(&["load", "--input", archive.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {}", show(&out));

    let host = |b: &str, env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(bin(b))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{b} here: {}", show(&out));
        stdout(&out)
    };
    let inside = |env: &[&str], command: &[&str]| {
        let out = podman_run(&store, &image, env, command);
        assert!(
            out.status.success(),
            "{command:?} in the image: {}",
            show(&out)
        );
        stdout(&out)
    };
    let version = inside(&[], &["/usr/local/bin/weft-agent", "--version"]);
    assert_eq!(version, host("weft-agent", &[], &["--version"]));
    assert!(version.starts_with("weft-agent "), "{version}");
    let cni = inside(&["CNI_COMMAND=VERSION"], &["/usr/local/bin/weft-cni"]);
    assert_eq!(cni, host("weft-cni", &[("CNI_COMMAND", "VERSION")], &[]));
    assert!(cni.contains("supportedVersions"), "{cni}");
    let help = inside(&[], &["/usr/local/bin/weftctl", "--help"]);
    assert_eq!(help, host("weftctl", &[], &["--help"]));
    assert!(help.contains("install-cni"), "{help}");
    drop(store);

    // What `kind load image-archive` runs on each node, then the image's
    // binaries under containerd's runc (a network namespace of their own).
    let containerd = Containerd::start();
    let archive = archive.to_str().unwrap();
    let out = containerd.ctr(&[
        "images",
        "import",
        "--all-platforms",
        "--digests",
        "--snapshotter=overlayfs",
        archive,
    ]);
    assert!(out.status.success(), "ctr images import: {}", show(&out));
    let images = stdout(&containerd.ctr(&["images", "list", "--quiet"]));
    assert!(
        images.lines().any(|l| l == image),
        "{image} not in:\n{images}"
    );
    for (i, command) in [
        &["/usr/local/bin/weft-agent", "--version"][..],
        &["/usr/local/bin/weftctl", "--help"],
    ]
    .iter()
    .enumerate()
    {
        let id = format!("weft-image-test-{}-{i}", std::process::id());
        let mut args = vec!["run", "--rm", "--snapshotter", "overlayfs", &image, &id];
        args.extend(command.iter());
        let out = containerd.ctr(&args);
        assert!(out.status.success(), "ctr run {command:?}: {}", show(&out));
        let name = Path::new(command[0]).file_name().unwrap().to_str().unwrap();
        assert_eq!(stdout(&out), host(name, &[], &command[1..]));
    }
}
