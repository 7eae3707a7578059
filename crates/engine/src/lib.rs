//! berth's engine: containers as users of Docker mean them. So far: what `docker run` turns
//! into an OCI runtime spec, with Docker's default security profile (capabilities, seccomp,
//! masked and read-only paths, device rules). The daemon and the cluster's node agent will
//! drive containers through this crate.

pub mod defaults;
pub mod spec;

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
