//! `berth`: the single binary. A thin command line over the library crates.
//!
//! Invoked as `berth-runtime` (a symlink to berth), it is an OCI runtime with runc's command
//! line exactly — what containerd, conmon/podman and dockerd expect to call — and
//! `berth-runtime create …` is `berth runtime create …`.

mod runtime_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Build, ship, run and orchestrate containers in one program"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The OCI runtime (the command line runc, crun and youki share).
    Runtime(runtime_cmd::RuntimeArgs),
}

/// The runtime command line as the top level, for `berth-runtime`.
#[derive(Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "berth's OCI runtime (runc's command line)"
)]
struct RuntimeCli {
    #[command(flatten)]
    args: runtime_cmd::RuntimeArgs,
}

fn main() {
    let invoked_as = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let code = if invoked_as == "berth-runtime" {
        runtime_cmd::main(RuntimeCli::parse().args)
    } else {
        match Cli::parse().command {
            Command::Runtime(args) => runtime_cmd::main(args),
        }
    };
    std::process::exit(code);
}
