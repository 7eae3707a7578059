//! berth's OCI runtime: turns an OCI bundle (runtime spec 1.2, Linux) into an isolated
//! process — namespaces, mounts, cgroups, seccomp, capabilities — and manages its lifecycle.
//!
//! It knows nothing of images, registries, networks or clusters. The engine drives it
//! in-process through [`Runtime`]; `berth runtime …` is a thin command line over the same API.

pub mod cgroups;
pub mod console;
mod container;
pub mod hooks;
mod init;
pub mod log;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod seccomp;
pub mod selfexe;
pub mod sharedmnt;
pub mod signal;
pub mod spec;
pub mod state;
mod sync;
pub mod syscall;

pub use container::{CreateOptions, ExecOptions, Runtime};
pub use state::{OciState, Status};

/// The OCI runtime spec version berth implements.
pub const OCI_VERSION: &str = "1.2.0";

/// Why a runtime operation failed. Messages name the field, file or container concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] spec::SpecError),
    #[error("config.json: {0}")]
    Spec(String),
    #[error("container setup: {0}")]
    Setup(String),
    #[error("{0}")]
    Hook(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Usage(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
