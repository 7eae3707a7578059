//! `berth`: the single binary. A thin command line over the library crates: the daemon
//! (`berth daemon`), the Docker-style client commands that talk to it, the OCI runtime, and
//! the per-container monitor the daemon starts (`berth shim`, not for users).
//!
//! Invoked as `berth-runtime` (a symlink to berth), it is an OCI runtime with runc's command
//! line exactly — what containerd, conmon/podman and dockerd expect to call — and
//! `berth-runtime create …` is `berth runtime create …`.

mod agent_cmd;
mod build_cmd;
mod cluster_registry;
mod container_cmd;
mod daemon;
mod etcd_member;
mod image_cmd;
mod registry_client_cmd;
mod registry_cmd;
mod runtime_cmd;
mod server_cmd;
mod template;
mod util;

use anyhow::Result;
use api::client::Client;
use clap::{Parser, Subcommand};

use container_cmd as cc;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Build, ship, run and orchestrate containers in one program"
)]
struct Cli {
    /// The daemon's socket (unix:///path); BERTH_HOST, else unix:///run/berth/berth.sock.
    #[arg(short = 'H', long, env = "BERTH_HOST", global = true)]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// `berth proxy …`
#[derive(Subcommand, Debug)]
enum ProxyCmd {
    /// How this node routes a Service's traffic: the addresses and ports that lead to it,
    /// its chains in nftables, and its endpoints.
    Explain {
        /// NAMESPACE/NAME (or NAME, in default).
        service: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the engine behind the API).
    Daemon(daemon::DaemonArgs),
    /// Build an image from a Dockerfile (or check one with --check).
    Build(build_cmd::BuildArgs),
    /// Download an image from a registry.
    Pull {
        #[arg(short = 'a', long = "all-tags")]
        all_tags: bool,
        #[arg(long)]
        platform: Option<String>,
        #[arg(short = 'q', long)]
        quiet: bool,
        name: String,
    },
    /// Upload an image to a registry.
    Push {
        #[arg(short = 'a', long = "all-tags")]
        all_tags: bool,
        #[arg(short = 'q', long)]
        quiet: bool,
        name: String,
    },
    /// Log in to a registry (credentials kept in Docker's config.json, mode 0600).
    Login {
        #[arg(short = 'u', long)]
        username: Option<String>,
        #[arg(short = 'p', long)]
        password: Option<String>,
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        server: Option<String>,
    },
    /// Log out from a registry.
    Logout { server: Option<String> },
    /// The registry: an OCI distribution server.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCmd),
    /// Run the cluster's control plane: the store and the Kubernetes API.
    Server(server_cmd::ServerArgs),
    /// Join a cluster as a node: run its pods on this machine's engine.
    Agent(agent_cmd::AgentArgs),
    /// Issue a kubeconfig for a new user of the cluster from its CA (on the server).
    Kubeconfig(server_cmd::KubeconfigArgs),
    /// Manage bootstrap tokens, with which new nodes join (`berth agent --token`).
    #[command(subcommand)]
    Token(server_cmd::TokenCmd),
    /// The etcd members of an HA cluster's servers (`berth server --cluster-init`).
    #[command(subcommand)]
    Member(etcd_member::MemberCmd),
    /// The node's service proxy (run on a node).
    #[command(subcommand)]
    Proxy(ProxyCmd),
    /// Create and run a new container from an image.
    #[command(disable_help_flag = true)]
    Run(cc::RunArgs),
    /// Create a new container.
    #[command(disable_help_flag = true)]
    Create(cc::CreateArgs),
    /// Start one or more stopped containers.
    Start(cc::StartArgs),
    /// Stop one or more running containers.
    Stop(cc::StopArgs),
    /// Restart one or more containers.
    Restart(cc::StopArgs),
    /// Kill one or more running containers.
    Kill(cc::KillArgs),
    /// Remove one or more containers.
    Rm(cc::RmArgs),
    /// List containers.
    Ps(cc::PsArgs),
    /// Fetch the logs of a container.
    Logs(cc::LogsArgs),
    /// Execute a command in a running container.
    Exec(cc::ExecArgs),
    /// Attach to a running container's input and output.
    Attach(cc::AttachArgs),
    /// Return low-level information on containers, images or volumes.
    Inspect(cc::InspectArgs),
    /// Display a live stream of container resource usage statistics.
    Stats(cc::StatsArgs),
    /// Display the running processes of a container.
    Top {
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Block until containers stop, then print their exit codes.
    Wait { containers: Vec<String> },
    /// Pause all processes within containers.
    Pause { containers: Vec<String> },
    /// Unpause all processes within containers.
    Unpause { containers: Vec<String> },
    /// Copy files between a container and the local filesystem.
    Cp { src: String, dst: String },
    /// Rename a container.
    Rename { container: String, new_name: String },
    /// Update the resources of containers.
    Update(cc::UpdateArgs),
    /// Get real time events from the daemon.
    Events(cc::EventsArgs),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(cc::VolumeCmd),
    /// Manage networks.
    #[command(subcommand)]
    Network(cc::NetworkCmd),
    /// List port mappings of a container.
    Port {
        container: String,
        private_port: Option<String>,
    },
    /// Manage sandboxes (pinned namespaces containers share, as in a pod).
    #[command(subcommand)]
    Sandbox(cc::SandboxCmd),
    /// Manage containers.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Manage berth.
    #[command(subcommand)]
    System(SystemCmd),
    /// Manage the build cache.
    #[command(subcommand)]
    Builder(BuilderCmd),
    /// Display system-wide information.
    Info {
        #[arg(short = 'f', long)]
        format: Option<String>,
    },
    /// Show the berth version information.
    Version {
        #[arg(short = 'f', long)]
        format: Option<String>,
    },
    /// The OCI runtime (the command line runc, crun and youki share).
    Runtime(Box<runtime_cmd::RuntimeArgs>),
    /// Manage images.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// List images.
    Images(image_cmd::ListArgs),
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Show how an image was made.
    History {
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        name: String,
    },
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
    /// Create a new image from a container's changes.
    Commit {
        #[arg(long, short = 'c')]
        change: Vec<String>,
        #[arg(long, short = 'm', default_value = "")]
        message: String,
        container: String,
        reference: Option<String>,
    },
}

#[derive(Subcommand)]
enum ContainerCmd {
    /// Remove all stopped containers.
    Prune {
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// List containers.
    #[command(alias = "list")]
    Ls(cc::PsArgs),
}

#[derive(Subcommand)]
enum SystemCmd {
    /// Show disk usage.
    Df,
    /// Remove stopped containers, the build cache, unused images (dangling; all with -a)
    /// and, with --volumes, unused anonymous volumes.
    Prune {
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(long)]
        volumes: bool,
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Display system-wide information.
    Info,
}

#[derive(Subcommand)]
enum BuilderCmd {
    /// Remove the build cache: cached steps, their images no tag or container uses, and the
    /// RUN cache mounts.
    Prune {
        /// Accepted for docker's command line: the whole cache goes either way.
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not prompt for confirmation (berth never prompts).
        #[arg(short = 'f', long)]
        force: bool,
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

/// `berth runtime …` alone: the same usage and help as through [`Cli`], without the parser of
/// every other command.
#[derive(Parser)]
#[command(name = "berth", version)]
struct RuntimeOnlyCli {
    #[command(subcommand)]
    command: RuntimeOnly,
}

#[derive(Subcommand)]
enum RuntimeOnly {
    /// The OCI runtime (the command line runc, crun and youki share).
    Runtime(Box<runtime_cmd::RuntimeArgs>),
}

impl RuntimeOnly {
    fn into_args(self) -> runtime_cmd::RuntimeArgs {
        let RuntimeOnly::Runtime(args) = self;
        *args
    }
}

fn client(host: Option<&str>) -> Result<Client> {
    Client::new(host).map_err(|e| util::Failure::new(1, e).into())
}

fn show(v: &serde_json::Value, format: Option<&str>) -> Result<i32> {
    match format {
        Some(f) => println!(
            "{}",
            template::render(f, v).map_err(|e| anyhow::anyhow!(e))?
        ),
        None => println!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(0)
}

fn dispatch(cli: Cli) -> Result<i32> {
    let host = cli.host.clone();
    let c = || client(host.as_deref());
    let fail1 =
        |e: api::client::ApiError| -> anyhow::Error { util::Failure::new(1, e.to_string()).into() };
    // Signing and verifying talk to the registry, not the daemon.
    let image = |cmd: image_cmd::ImageCmd| -> Result<i32> {
        match image_cmd::signatures(cmd)? {
            Some(cmd) => image_cmd::main(&c()?, cmd).map(|()| 0),
            None => Ok(0),
        }
    };
    match cli.command {
        Command::Daemon(a) => daemon::run(&a),
        Command::Build(a) => build_cmd::run(c().ok().as_ref(), &a),
        Command::Registry(cmd) => registry_cmd::run(cmd),
        Command::Server(a) => server_cmd::run(a),
        Command::Agent(a) => agent_cmd::run(a),
        Command::Kubeconfig(a) => server_cmd::kubeconfig(a),
        Command::Token(cmd) => server_cmd::token(cmd),
        Command::Member(cmd) => etcd_member::member(cmd),
        Command::Proxy(ProxyCmd::Explain { service }) => {
            let (ns, name) = match service.split_once('/') {
                Some((ns, name)) => (ns.to_string(), name.to_string()),
                None => ("default".to_string(), service.clone()),
            };
            if ns.is_empty() || name.is_empty() || name.contains('/') {
                return Err(util::Failure::new(
                    1,
                    format!("{service:?}: name a Service as NAMESPACE/NAME or NAME (in default)"),
                )
                .into());
            }
            print!("{}", agent::proxy::explain_here(&format!("{ns}/{name}"))?);
            Ok(0)
        }
        Command::Pull {
            all_tags,
            platform,
            quiet,
            name,
        } => registry_client_cmd::pull(&c()?, &name, platform.as_deref(), all_tags, quiet),
        Command::Push {
            all_tags,
            quiet,
            name,
        } => registry_client_cmd::push(&c()?, &name, all_tags, quiet),
        Command::Login {
            username,
            password,
            password_stdin,
            server,
        } => registry_client_cmd::login(
            &c()?,
            server.as_deref(),
            username.as_deref(),
            password.as_deref(),
            password_stdin,
        ),
        Command::Logout { server } => registry_client_cmd::logout(server.as_deref()),
        Command::Run(a) => cc::run(&c()?, &a),
        Command::Create(a) => cc::create_cmd(&c()?, &a),
        Command::Start(a) => cc::start(&c()?, &a),
        Command::Stop(a) => cc::stop(&c()?, &a, false),
        Command::Restart(a) => cc::stop(&c()?, &a, true),
        Command::Kill(a) => cc::kill(&c()?, &a),
        Command::Rm(a) => cc::rm(&c()?, &a),
        Command::Ps(a) | Command::Container(ContainerCmd::Ls(a)) => cc::ps(&c()?, &a),
        Command::Logs(a) => cc::logs(&c()?, &a),
        Command::Exec(a) => cc::exec(&c()?, &a),
        Command::Attach(a) => cc::attach(&c()?, &a),
        Command::Inspect(a) => cc::inspect(&c()?, &a),
        Command::Stats(a) => cc::stats(&c()?, &a),
        Command::Top { container, ps_args } => cc::top(&c()?, &container, &ps_args),
        Command::Wait { containers } => cc::wait(&c()?, &containers),
        Command::Pause { containers } => cc::pause(&c()?, &containers, true),
        Command::Unpause { containers } => cc::pause(&c()?, &containers, false),
        Command::Cp { src, dst } => cc::cp(&c()?, &src, &dst),
        Command::Rename {
            container,
            new_name,
        } => cc::rename(&c()?, &container, &new_name),
        Command::Update(a) => cc::update(&c()?, &a),
        Command::Events(a) => cc::events(&c()?, &a),
        Command::Volume(v) => cc::volume(&c()?, &v),
        Command::Sandbox(s) => cc::sandbox(&c()?, &s),
        Command::Network(n) => cc::network(&c()?, &n),
        Command::Port {
            container,
            private_port,
        } => cc::port(&c()?, &container, private_port.as_deref()),
        Command::Container(ContainerCmd::Prune { force: _ }) => cc::container_prune(&c()?),
        Command::System(SystemCmd::Df) => {
            let v = c()?.json("GET", "/system/df", None).map_err(fail1)?;
            let images = v["Images"].as_array().cloned().unwrap_or_default();
            let ctrs = v["Containers"].as_array().cloned().unwrap_or_default();
            let vols = v["Volumes"].as_array().cloned().unwrap_or_default();
            let sum = |a: &[serde_json::Value], k: &str| {
                a.iter().map(|x| x[k].as_u64().unwrap_or(0)).sum::<u64>()
            };
            let active_i = images
                .iter()
                .filter(|i| i["Containers"].as_u64().unwrap_or(0) > 0)
                .count();
            let active_c = ctrs.iter().filter(|c| c["State"] == "running").count();
            let active_v = vols
                .iter()
                .filter(|v| v["RefCount"].as_u64().unwrap_or(0) > 0)
                .count();
            let table = vec![
                ["TYPE", "TOTAL", "ACTIVE", "SIZE"]
                    .map(String::from)
                    .to_vec(),
                vec![
                    "Images".into(),
                    images.len().to_string(),
                    active_i.to_string(),
                    util::human_size(sum(&images, "Size")),
                ],
                vec![
                    "Containers".into(),
                    ctrs.len().to_string(),
                    active_c.to_string(),
                    util::human_size(sum(&ctrs, "SizeRw")),
                ],
                vec![
                    "Local Volumes".into(),
                    vols.len().to_string(),
                    active_v.to_string(),
                    util::human_size(sum(&vols, "Size")),
                ],
            ];
            util::print_table(&mut std::io::stdout().lock(), &table)?;
            Ok(0)
        }
        Command::Builder(BuilderCmd::Prune { all: _, force: _ }) => {
            let v = c()?.json("POST", "/builder/prune", None).map_err(fail1)?;
            println!(
                "Deleted build cache objects: {}\nDeleted cache mounts: {}\nDeleted images: {}",
                v["CachesDeleted"],
                v["CacheMountsDeleted"],
                v["ImagesDeleted"].as_array().map_or(0, |a| a.len())
            );
            println!(
                "\nTotal reclaimed space: {}",
                util::human_size(v["SpaceReclaimed"].as_u64().unwrap_or(0))
            );
            Ok(0)
        }
        Command::System(SystemCmd::Prune {
            all,
            volumes,
            force: _,
        }) => {
            let v = c()?
                .json(
                    "POST",
                    &format!(
                        "/system/prune?all={}&volumes={}",
                        u8::from(all),
                        u8::from(volumes)
                    ),
                    None,
                )
                .map_err(fail1)?;
            let cache = &v["BuildCache"];
            if cache["CachesDeleted"].as_u64().unwrap_or(0) > 0 {
                println!("Deleted build cache objects: {}\n", cache["CachesDeleted"]);
            }
            for (k, title) in [
                ("ContainersDeleted", "Deleted Containers:"),
                ("ImagesDeleted", "Deleted Images:"),
                ("VolumesDeleted", "Deleted Volumes:"),
            ] {
                let items = v[k].as_array().cloned().unwrap_or_default();
                if !items.is_empty() {
                    println!("{title}");
                    for i in items {
                        println!("{}", i.as_str().unwrap_or(""));
                    }
                    println!();
                }
            }
            Ok(0)
        }
        Command::System(SystemCmd::Info) => {
            show(&c()?.json("GET", "/info", None).map_err(fail1)?, None)
        }
        Command::Info { format } => show(
            &c()?.json("GET", "/info", None).map_err(fail1)?,
            format.as_deref(),
        ),
        Command::Version { format } => {
            let server = c()?.json("GET", "/version", None).map_err(fail1)?;
            let v = serde_json::json!({
                "Client": {"Version": env!("CARGO_PKG_VERSION"), "ApiVersion": api::API_VERSION, "Os": "linux", "Arch": std::env::consts::ARCH},
                "Server": server,
            });
            show(&v, format.as_deref())
        }
        Command::Runtime(args) => Ok(runtime_cmd::main(*args)),
        Command::Image(cmd) => image(cmd),
        Command::Images(args) => image(image_cmd::ImageCmd::Ls(args)),
        Command::Tag { source, target } => image(image_cmd::ImageCmd::Tag { source, target }),
        Command::History { no_trunc, name } => {
            image(image_cmd::ImageCmd::History { no_trunc, name })
        }
        Command::Save {
            output,
            format,
            names,
        } => image(image_cmd::ImageCmd::Save {
            output,
            format,
            names,
        }),
        Command::Load { input, quiet } => image(image_cmd::ImageCmd::Load { input, quiet }),
        Command::Rmi { force, names } => image(image_cmd::ImageCmd::Rm { force, names }),
        Command::Commit {
            change,
            message,
            container,
            reference,
        } => image(image_cmd::ImageCmd::Commit {
            change,
            message,
            container,
            reference,
        }),
    }
}

fn main() {
    runtime::log::trace("berth's main");
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The monitor must start before anything else (it forks and needs a single thread).
    if args.len() == 3 && args[1] == "shim" {
        engine::shim::main(std::path::Path::new(&args[2]));
    }
    let invoked_as = args
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    // The runtime's command line is parsed alone: building the parser of every berth command
    // is measurable on a container's start. A command that enters a container re-executes
    // first (CVE-2019-5736), before any parsing, so that work is done once.
    let runtime_args = if invoked_as == "berth-runtime" {
        Some(&args[1..])
    } else if args.get(1).is_some_and(|a| a == "runtime") {
        Some(&args[2..])
    } else {
        None
    };
    if runtime_args.is_some_and(runtime_cmd::enters_container) {
        if let Err(e) = runtime::selfexe::ensure_protected() {
            eprintln!("berth: protecting the runtime binary (CVE-2019-5736): {e}");
            std::process::exit(1);
        }
    }
    let code = if invoked_as == "berth-runtime" {
        runtime_cmd::main(RuntimeCli::parse().args)
    } else if runtime_args.is_some() {
        runtime_cmd::main(RuntimeOnlyCli::parse().command.into_args())
    } else {
        let cli = Cli::parse();
        dispatch(cli).unwrap_or_else(|e| {
            let code = e.downcast_ref::<util::Failure>().map_or(1, |f| f.code);
            eprintln!("berth: {e:#}");
            code
        })
    };
    std::process::exit(code);
}
