//! berth's engine: containers as users of Docker mean them. `spec` turns `docker run` options
//! into an OCI runtime spec with Docker's default security profile; `engine` manages
//! containers (create, start, stop, logs, exec, restart policies, health checks, volumes)
//! under per-container monitor processes (`shim`). The daemon and the cluster's node agent
//! drive containers through this crate.

pub mod builder;
pub mod defaults;
pub mod distribution;
pub mod dns;
pub mod engine;
pub mod events;
pub mod fsutil;
pub mod health;
pub mod init;
pub mod logfile;
pub mod netns;
pub mod network;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod volumes;

pub use engine::{
    Config, CreateRequest, Engine, EngineError, ExecRequest, RestartPolicy, UpdateRequest,
};
#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    /// The default seccomp profile is one berth's own compiler accepts, for the default, the
    /// full and an empty capability set.
    #[test]
    fn default_seccomp_profiles_compile() {
        let sets: [HashSet<oci_spec::runtime::Capability>; 3] = [
            crate::defaults::default_capabilities(),
            crate::defaults::all_capabilities(),
            HashSet::new(),
        ];
        for caps in sets {
            let profile = crate::defaults::default_seccomp(&caps);
            let filter = runtime::seccomp::compile(&profile).unwrap_or_else(|e| panic!("{e}"));
            assert!(!filter.is_empty() && filter.len() < 4096);
        }
    }
}
