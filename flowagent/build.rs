//! Builds the eBPF programs (flowagent-ebpf, target bpfel-unknown-none) with
//! the dated nightly that `flowagent-ebpf/rust-toolchain.toml` pins and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.
//!
//! Also generates the gRPC code (prost messages, tonic client and server)
//! from `proto/flowagent/v1/flow.proto`, with the protoc that the
//! protoc-bin-vendored crate ships (no system protoc needed), and writes the
//! file descriptor set that server reflection serves.

use anyhow::{Context as _, anyhow};

// The same reading of rust-toolchain.toml as `cargo xtask setup` uses.
#[path = "../xtask/src/toolchain.rs"]
mod toolchain;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("flowagent crate has no parent directory"))?;
    compile_protos(workspace)?;
    let root = workspace.join("flowagent-ebpf");
    let toolchain_file = root.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = toolchain::read_channel(&toolchain_file).map_err(anyhow::Error::msg)?;
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "flowagent-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install nightly, rust-src and bpf-linker")
}

fn compile_protos(workspace: &std::path::Path) -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .context("protoc-bin-vendored has no protoc for this host")?;
    // SAFETY: build scripts are single-threaded; nothing reads the
    // environment concurrently. prost-build reads PROTOC to find protoc.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    let proto_dir = workspace.join("proto");
    let proto = proto_dir.join("flowagent/v1/flow.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(
            std::path::Path::new(&out_dir).join("flowagent_v1_descriptor.bin"),
        )
        .compile_protos(&[proto.as_path()], &[proto_dir.as_path()])
        .with_context(|| format!("compiling {}", proto.display()))
}
