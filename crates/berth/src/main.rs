//! `berth`: the single binary. A thin command line over the library crates.

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

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Runtime(args) => runtime_cmd::main(args),
    };
    std::process::exit(code);
}
