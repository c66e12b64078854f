//! The `liaison` command: a thin entry point over the library's command line
//! ([`liaison::cli`]).
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    liaison::cli::main().await
}
