//! Embeds the eBPF object built by scripts/build-ebpf.sh.
//!
//! The object comes from `WEFT_EBPF_OBJECT` if set, else from
//! `<workspace>/ebpf/target/bpfel-unknown-none/release/weft-ebpf`. When it is
//! missing the crate still compiles (the rest of the dataplane does not need
//! it) and `PodGuard::load` reports how to build it: the cfg
//! `weft_ebpf_object` says whether it was found.
//!
//! An object older than the eBPF sources (say, built on another branch) is
//! still embedded, with a warning: its map layouts may not match this
//! checkout's, which shows up later as confusing map errors at load time.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the default object is built from.
const EBPF_SOURCES: &[&str] = &[
    "../ebpf/src",
    "../ebpf/Cargo.toml",
    "../common/src",
    "../common/Cargo.toml",
];

/// The newest file under `path` and its modification time.
fn newest(path: &Path) -> Option<(SystemTime, PathBuf)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some((meta.modified().ok()?, path.to_path_buf()));
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|entry| newest(&entry.path()))
        .max_by_key(|(time, _)| *time)
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(weft_ebpf_object)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WEFT_EBPF_OBJECT");

    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let (object, default) = match std::env::var_os("WEFT_EBPF_OBJECT") {
        Some(path) => (PathBuf::from(path), false),
        None => (
            manifest_dir.join("../ebpf/target/bpfel-unknown-none/release/weft-ebpf"),
            true,
        ),
    };
    // Watched even while missing, so the crate picks the object up as soon as
    // it is built (cargo reruns a build script whose watched file is absent).
    println!("cargo:rerun-if-changed={}", object.display());

    if default {
        for source in EBPF_SOURCES {
            println!(
                "cargo:rerun-if-changed={}",
                manifest_dir.join(source).display()
            );
        }
    }
    let built = std::fs::metadata(&object).and_then(|m| m.modified()).ok();
    let newer_source = EBPF_SOURCES
        .iter()
        .filter_map(|source| newest(&manifest_dir.join(source)))
        .max_by_key(|(time, _)| *time);
    if let (true, Some(built), Some((changed, file))) = (default, built, newer_source)
        && changed > built
    {
        println!(
            "cargo:warning=eBPF object {} is older than {}: it may not match this checkout (map sizes, counters); run `make ebpf`",
            object.display(),
            file.display()
        );
    }

    if object.is_file() {
        let object = object
            .canonicalize()
            .expect("an existing file has a canonical path");
        println!("cargo:rustc-cfg=weft_ebpf_object");
        println!("cargo:rustc-env=WEFT_EBPF_OBJECT_PATH={}", object.display());
    } else {
        println!(
            "cargo:warning=eBPF object {} not found: weft-dataplane builds without it and PodGuard::load will fail; run `make build` (scripts/build-ebpf.sh)",
            object.display()
        );
    }
}
