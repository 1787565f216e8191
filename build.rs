//! Compiles `proto/` with protox (no system protoc) and generates the tonic code.
//!
//! The encoded descriptor set is written to `OUT_DIR/citypark_descriptor.bin` so the
//! server can offer gRPC reflection without a second compile.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "proto/citypark/v1/types.proto",
    "proto/citypark/v1/registry.proto",
    "proto/citypark/v1/ingest.proto",
    "proto/citypark/v1/availability.proto",
    "proto/citypark/v1/reservations.proto",
    "proto/citypark/v1/shared.proto",
    "proto/citypark/v1/sessions.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("citypark_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
