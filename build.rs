//! Compiles `proto/liaison/v1/*.proto` with the pure-Rust `protox` (no system `protoc`)
//! and exports the descriptor set so the server can answer reflection requests.

use std::{env, fs, path::PathBuf};

/// The OpenAPI writer the hub's HTTP module uses and its template parser, compiled
/// here to write the document at build time.
#[allow(dead_code)]
#[path = "src/api/http/openapi.rs"]
mod openapi;
#[allow(dead_code)]
#[path = "src/api/http/template.rs"]
mod template;

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
    "liaison/v1/mapping.proto",
    "liaison/v1/exports.proto",
    "liaison/v1/audit.proto",
    "google/longrunning/operations.proto",
    // Not imported by any service: served by reflection so that generic clients
    // (grpcurl, Postman) can decode the error details the hub sends.
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds the migrations; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let document = openapi::document(&compiler.descriptor_pool(), "v1")?;

    build_info()?;
    postgres_tests();
    example_tests();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("openapi.json"),
        serde_json::to_string_pretty(&document)? + "\n",
    )?;
    // Encoded by protox, not prost: prost's option types drop the extensions
    // (`google.api.http`) the server reads back from this set.
    fs::write(
        out_dir.join("liaison_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, but an undecodable request is INVALID_ARGUMENT (src/api/codec.rs).
        .codec_path("crate::api::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}

/// The end-to-end tests' PostgreSQL variants run when the server to test on is named
/// at build time (`cargo test` builds and runs with the same environment); otherwise
/// they are marked ignored, so a run without PostgreSQL says so in its summary.
fn postgres_tests() {
    println!("cargo::rustc-check-cfg=cfg(liaison_postgres_tests)");
    println!("cargo:rerun-if-env-changed=LIAISON_TEST_POSTGRES_URL");
    if env::var("LIAISON_TEST_POSTGRES_URL").is_ok_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=liaison_postgres_tests");
    }
}

/// The tests that run the README's walk-through and the examples need Python with the
/// examples' packages and the network (PyPI): they run when that Python is named at
/// build time (`.ci/run` does), and are marked ignored otherwise.
fn example_tests() {
    println!("cargo::rustc-check-cfg=cfg(liaison_example_tests)");
    println!("cargo:rerun-if-env-changed=LIAISON_TEST_EXAMPLES_PYTHON");
    if env::var("LIAISON_TEST_EXAMPLES_PYTHON").is_ok_and(|p| !p.is_empty()) {
        println!("cargo:rustc-cfg=liaison_example_tests");
    }
}

/// What `liaison --version` says of the build: target, profile, compiler, and the
/// commit when the builder names it in `LIAISON_BUILD_COMMIT` (the Dockerfile does).
fn build_info() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=LIAISON_BUILD_COMMIT");
    let commit = env::var("LIAISON_BUILD_COMMIT").unwrap_or_default();
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "rustc (unknown)".into());
    let features: Vec<String> = env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase()))
        .filter(|f| f != "default")
        .collect();
    let info = format!(
        "{} (commit {}, {}, {} build, {}, features: {})",
        env::var("CARGO_PKG_VERSION")?,
        if commit.is_empty() {
            "unknown"
        } else {
            commit.as_str()
        },
        env::var("TARGET")?,
        env::var("PROFILE")?,
        rustc_version,
        if features.is_empty() {
            "none".to_owned()
        } else {
            features.join(",")
        },
    );
    println!("cargo:rustc-env=HUB_BUILD_INFO={info}");
    Ok(())
}
