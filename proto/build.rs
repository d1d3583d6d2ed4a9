//! Compiles `myagent/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "myagent/v1/common.proto",
    "myagent/v1/services.proto",
    "myagent/v1/routing.proto",
    "myagent/v1/connections.proto",
    "myagent/v1/health.proto",
    "myagent/v1/logs.proto",
    "myagent/v1/stats.proto",
    "myagent/v1/proxy.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("myagent_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(fds)?;
    Ok(())
}
