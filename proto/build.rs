//! Compiles `treaty/v1/*.proto` with protox, a protobuf compiler written in Rust, so that a fresh
//! machine builds Treaty with cargo alone (no system `protoc`). The encoded descriptor set is
//! kept for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "treaty/v1/tensor.proto",
    "treaty/v1/jobs.proto",
    "treaty/v1/agency.proto",
    "treaty/v1/operator.proto",
    "treaty/v1/storage.proto",
    "treaty/v1/scoring.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("treaty_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".treaty.v1")
        .compile_fds(fds)?;
    Ok(())
}
