//! `berth`: the single binary. A thin command line over the library crates.
//!
//! Invoked as `berth-runtime` (a symlink to berth), it is an OCI runtime with runc's command
//! line exactly — what containerd, conmon/podman and dockerd expect to call — and
//! `berth-runtime create …` is `berth runtime create …`.

mod image_cmd;
mod runtime_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Build, ship, run and orchestrate containers in one program"
)]
struct Cli {
    /// Where images and other state live.
    #[arg(
        long = "data-root",
        env = "BERTH_DATA_ROOT",
        default_value = "/var/lib/berth"
    )]
    data_root: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The OCI runtime (the command line runc, crun and youki share).
    Runtime(Box<runtime_cmd::RuntimeArgs>),
    /// Manage images.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// List images.
    Images(image_cmd::ListArgs),
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Write images to a tar archive.
    Save {
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
        #[arg(long, default_value = "docker")]
        format: String,
        names: Vec<String>,
    },
    /// Load images from a tar archive.
    Load {
        #[arg(long, short = 'i')]
        input: Option<std::path::PathBuf>,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Remove images.
    Rmi {
        #[arg(long, short = 'f')]
        force: bool,
        names: Vec<String>,
    },
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
        let cli = Cli::parse();
        let root = cli.data_root;
        let result = match cli.command {
            Command::Runtime(args) => Ok(runtime_cmd::main(*args)),
            Command::Image(cmd) => image_cmd::main(&root, cmd).map(|()| 0),
            Command::Images(args) => {
                image_cmd::main(&root, image_cmd::ImageCmd::Ls(args)).map(|()| 0)
            }
            Command::Tag { source, target } => {
                image_cmd::main(&root, image_cmd::ImageCmd::Tag { source, target }).map(|()| 0)
            }
            Command::Save {
                output,
                format,
                names,
            } => image_cmd::main(
                &root,
                image_cmd::ImageCmd::Save {
                    output,
                    format,
                    names,
                },
            )
            .map(|()| 0),
            Command::Load { input, quiet } => {
                image_cmd::main(&root, image_cmd::ImageCmd::Load { input, quiet }).map(|()| 0)
            }
            Command::Rmi { force, names } => {
                image_cmd::main(&root, image_cmd::ImageCmd::Rm { force, names }).map(|()| 0)
            }
        };
        result.unwrap_or_else(|e| {
            eprintln!("berth: {e:#}");
            1
        })
    };
    std::process::exit(code);
}
