//! Device cgroup rules: checking OCI `linux.resources.devices` entries and rendering them for v1.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{invalid, CgroupError, Write};

const FIELD: &str = "linux.resources.devices";

/// mknod access bit (same value as the kernel's BPF_DEVCG_ACC_MKNOD).
pub const ACC_MKNOD: u8 = 1;
/// read access bit (BPF_DEVCG_ACC_READ).
pub const ACC_READ: u8 = 2;
/// write access bit (BPF_DEVCG_ACC_WRITE).
pub const ACC_WRITE: u8 = 4;
/// All three.
pub const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Device kind of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// "a": every device, whatever the numbers and access (as the v1 kernel treats it).
    All,
    /// "c"
    Char,
    /// "b"
    Block,
}

/// One checked device rule. Rules apply in order; for each access bit the last matching rule
/// decides, and nothing matches → denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow or deny.
    pub allow: bool,
    /// Device kind.
    pub kind: DeviceKind,
    /// Major number; None = any.
    pub major: Option<u32>,
    /// Minor number; None = any.
    pub minor: Option<u32>,
    /// Access bits ([`ACC_READ`] | [`ACC_WRITE`] | [`ACC_MKNOD`]).
    pub access: u8,
}

fn number(v: Option<i64>, what: &str, i: usize) -> Result<Option<u32>, CgroupError> {
    match v {
        None | Some(-1) => Ok(None),
        // The eBPF filter compares with sign-extended 32-bit immediates; Linux device numbers are
        // at most 20 bits anyway.
        Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(invalid(
            FIELD,
            format!(
                "rule {i}: invalid {what} number {n} (must be -1 for any, or 0..{})",
                i32::MAX
            ),
        )),
    }
}

/// Checks OCI device rules. A missing type means "a", a missing major/minor (or -1) means any, a
/// missing access means "rwm".
pub fn normalize(rules: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let kind = match r.typ() {
            None | Some(LinuxDeviceType::A) => DeviceKind::All,
            Some(LinuxDeviceType::C) => DeviceKind::Char,
            Some(LinuxDeviceType::B) => DeviceKind::Block,
            Some(t) => {
                return Err(invalid(
                    FIELD,
                    format!(
                        "rule {i}: device type {:?} cannot be used in a device cgroup rule (use a, b or c)",
                        t.as_str()
                    ),
                ))
            }
        };
        let access = match r.access().as_deref() {
            None => ACC_ALL,
            Some(s) => {
                let mut bits = 0u8;
                for ch in s.chars() {
                    let bit = match ch {
                        'r' => ACC_READ,
                        'w' => ACC_WRITE,
                        'm' => ACC_MKNOD,
                        _ => 0,
                    };
                    if bit == 0 || bits & bit != 0 {
                        return Err(invalid(
                            FIELD,
                            format!("rule {i}: invalid access {s:?} (a combination of r, w and m)"),
                        ));
                    }
                    bits |= bit;
                }
                if bits == 0 {
                    return Err(invalid(
                        FIELD,
                        format!("rule {i}: empty access (a combination of r, w and m)"),
                    ));
                }
                bits
            }
        };
        out.push(DeviceRule {
            allow: r.allow(),
            kind,
            major: number(r.major(), "major", i)?,
            minor: number(r.minor(), "minor", i)?,
            access,
        });
    }
    Ok(out)
}

/// The v1 text of a rule: "c 1:3 rwm", "*" for any number, just "a" for all devices.
pub fn v1_rule_text(r: &DeviceRule) -> String {
    let kind = match r.kind {
        DeviceKind::All => return "a".into(),
        DeviceKind::Char => 'c',
        DeviceKind::Block => 'b',
    };
    let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
    let mut access = String::new();
    for (bit, ch) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
        if r.access & bit != 0 {
            access.push(ch);
        }
    }
    format!("{kind} {}:{} {access}", num(r.major), num(r.minor))
}

/// v1 writes: "a" to devices.deny, then each rule to devices.allow or devices.deny in order.
pub fn v1_device_writes(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Write>, CgroupError> {
    let rules = normalize(rules)?;
    let mut out = vec![Write::new("devices", "devices.deny", "a", FIELD)];
    for r in &rules {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        out.push(Write::new("devices", file, v1_rule_text(r), FIELD));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn v1_text() {
        let cases = [
            (
                r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}"#,
                "c 1:3 rwm",
            ),
            (
                r#"{"allow":true,"type":"c","major":136,"access":"wr"}"#,
                "c 136:* rw",
            ),
            (
                r#"{"allow":true,"type":"b","major":-1,"minor":-1,"access":"m"}"#,
                "b *:* m",
            ),
            (r#"{"allow":false,"access":"rwm"}"#, "a"),
            (r#"{"allow":true,"type":"a","major":5}"#, "a"),
            (
                r#"{"allow":true,"type":"c","major":10,"minor":200}"#,
                "c 10:200 rwm",
            ),
        ];
        for (json, want) in cases {
            let r = normalize(&rules(&format!("[{json}]"))).unwrap();
            assert_eq!(v1_rule_text(&r[0]), want, "{json}");
        }
    }

    #[test]
    fn invalid_rules() {
        let cases = [
            (
                r#"{"allow":true,"type":"p"}"#,
                "rule 0: device type \"p\" cannot be used",
            ),
            (
                r#"{"allow":true,"type":"c","access":"rwx"}"#,
                "rule 0: invalid access \"rwx\"",
            ),
            (
                r#"{"allow":true,"type":"c","access":"rr"}"#,
                "rule 0: invalid access \"rr\"",
            ),
            (
                r#"{"allow":true,"type":"c","access":""}"#,
                "rule 0: empty access",
            ),
            (
                r#"{"allow":true,"type":"c","major":-2}"#,
                "rule 0: invalid major number -2",
            ),
            (
                r#"{"allow":true,"type":"c","minor":4294967296}"#,
                "rule 0: invalid minor number",
            ),
        ];
        for (json, want) in cases {
            let e = normalize(&rules(&format!("[{json}]")))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("linux.resources.devices: "), "{e}");
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn v1_writes_deny_all_first() {
        let w = v1_device_writes(&rules(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},{"allow":false,"type":"c","major":1,"minor":3,"access":"w"}]"#,
        ))
        .unwrap();
        let got: Vec<String> = w
            .iter()
            .map(|w| format!("{}={}", w.file, w.value))
            .collect();
        assert_eq!(
            got,
            [
                "devices.deny=a",
                "devices.deny=a",
                "devices.allow=c 1:3 rwm",
                "devices.deny=c 1:3 w"
            ]
        );
    }
}
