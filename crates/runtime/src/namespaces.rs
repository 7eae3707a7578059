//! Which namespaces a container creates and which it joins by path.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The namespace work of one container start, decided from the spec alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// CLONE_NEW* flags of namespaces to create, cgroup excluded (it is unshared once the
    /// process sits in its cgroup, so the namespace's root is the container's cgroup).
    pub new: u64,
    pub new_cgroup: bool,
    /// Namespaces to join, the user namespace first.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl Plan {
    pub fn from_spec(spec: &Spec) -> Plan {
        let mut plan = Plan::default();
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        for ns in &namespaces {
            match ns.path() {
                Some(p) => plan.join.push((ns.typ(), p.clone())),
                None if ns.typ() == LinuxNamespaceType::Cgroup => plan.new_cgroup = true,
                None => plan.new |= flag(ns.typ()),
            }
        }
        // setns order: user first (it grants the rights for the rest), mount last (after it, host paths are gone).
        plan.join.sort_by_key(|(t, _)| match t {
            LinuxNamespaceType::User => 0,
            LinuxNamespaceType::Mount => 2,
            _ => 1,
        });
        plan
    }

    pub fn new_user(&self) -> bool {
        self.new & libc::CLONE_NEWUSER as u64 != 0
    }

    /// Joining by path needs an intermediate process: setns(2) into a pid namespace only
    /// affects children, and joins must happen before a new user namespace takes our rights.
    pub fn two_stage(&self) -> bool {
        !self.join.is_empty()
    }
}

/// CLONE_NEW* flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> u64 {
    (match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80,
    }) as u64
}

/// The /proc/<pid>/ns file name of a namespace type.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Every namespace type `exec` joins, in setns order.
pub const EXEC_ORDER: &[LinuxNamespaceType] = &[
    LinuxNamespaceType::User,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Mount,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_joined_namespaces() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.2.0","linux":{"namespaces":[
            {"type":"mount"},{"type":"network","path":"/run/netns/pod"},{"type":"pid"},{"type":"cgroup"},
            {"type":"user","path":"/proc/1/ns/user"},{"type":"uts"}]}}"#,
        )
        .unwrap();
        let p = Plan::from_spec(&spec);
        assert_eq!(
            p.new,
            (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS) as u64
        );
        assert!(p.new_cgroup);
        assert_eq!(p.join[0].0, LinuxNamespaceType::User);
        assert_eq!(
            p.join[1],
            (LinuxNamespaceType::Network, PathBuf::from("/run/netns/pod"))
        );
        assert!(p.two_stage() && !p.new_user());

        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.2.0","linux":{"namespaces":[{"type":"user"},{"type":"pid"}]}}"#,
        )
        .unwrap();
        let p = Plan::from_spec(&spec);
        assert!(p.new_user() && !p.two_stage());
    }
}
