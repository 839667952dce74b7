//! Embeds the eBPF object built by scripts/build-ebpf.sh.
//!
//! The object comes from `WEFT_EBPF_OBJECT` if set, else from
//! `<workspace>/ebpf/target/bpfel-unknown-none/release/weft-ebpf`. When it is
//! missing the crate still compiles (the rest of the dataplane does not need
//! it) and `PodGuard::load` reports how to build it: the cfg
//! `weft_ebpf_object` says whether it was found.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(weft_ebpf_object)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WEFT_EBPF_OBJECT");

    let object = match std::env::var_os("WEFT_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest_dir =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest_dir.join("../ebpf/target/bpfel-unknown-none/release/weft-ebpf")
        }
    };
    // Watched even while missing, so the crate picks the object up as soon as
    // it is built (cargo reruns a build script whose watched file is absent).
    println!("cargo:rerun-if-changed={}", object.display());

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
