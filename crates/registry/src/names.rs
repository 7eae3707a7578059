//! Repository names and tags as the distribution spec defines them.

use crate::error::RegError;

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255
/// characters with the registry's host.
pub fn validate(name: &str) -> Result<(), RegError> {
    let bad = || RegError::name_invalid(format!("invalid repository name {name:?}"));
    if name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    for component in name.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(bad());
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__` or a run of `-`, between alphanumerics.
            let sep_start = i;
            match b[i] {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if i < b.len() && b[i] == b'_' {
                        i += 1;
                    }
                }
                b'-' => {
                    while i < b.len() && b[i] == b'-' {
                        i += 1;
                    }
                }
                _ => return Err(bad()),
            }
            if i == sep_start || i >= b.len() || !alnum(b[i]) {
                return Err(bad());
            }
        }
    }
    Ok(())
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), RegError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegError::tag_invalid(format!("invalid tag {tag:?}")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_tags() {
        for good in ["a", "library/busybox", "a.b_c__d---e/f0", "x/y/z"] {
            assert!(super::validate(good).is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a___b", "-a", "a-", "a..b", "a/../b", "a b",
        ] {
            assert!(super::validate(bad).is_err(), "{bad}");
        }
        for good in ["latest", "v1.0", "_x", "A-b_c.d"] {
            assert!(super::validate_tag(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(super::validate_tag(bad).is_err(), "{bad}");
        }
    }
}
