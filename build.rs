//! Compiles `proto/liaison/v1/*.proto` with the pure-Rust `protox` (no system `protoc`)
//! and exports the descriptor set so the server can answer reflection requests.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "liaison/v1/organizations.proto",
    "liaison/v1/members.proto",
    "liaison/v1/partnerships.proto",
    "liaison/v1/customers.proto",
    "liaison/v1/sharing.proto",
    "liaison/v1/interactions.proto",
    "liaison/v1/events.proto",
    "liaison/v1/webhooks.proto",
    "liaison/v1/cases.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("liaison_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
