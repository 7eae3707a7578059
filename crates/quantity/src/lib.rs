//! Kubernetes resource quantities as the node agent and the scheduler add them up: CPU in
//! millicores, everything else in units (bytes, pods). No dependencies.

#![forbid(unsafe_code)]

/// A CPU quantity in millicores (`500m`, `2`, `1.5`), rounded up.
pub fn cpu_milli(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>().ok().map(|v| (v * 1000.0).ceil() as u64)
}

/// A quantity in units (`64Mi`, `1G`, `1e3`, `128974848`, `500m` = 1), rounded up.
pub fn units(q: &str) -> Option<u64> {
    let suffixes: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (s, m) in suffixes {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().map(|v| (v * m).ceil() as u64);
        }
    }
    if let Some(n) = q.strip_suffix('m') {
        return n.parse::<f64>().ok().map(|v| (v / 1000.0).ceil() as u64);
    }
    q.parse::<f64>().ok().map(|v| v.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_milli("500m"), Some(500));
        assert_eq!(cpu_milli("1.5"), Some(1500));
        assert_eq!(cpu_milli("2"), Some(2000));
        assert_eq!(units("64Mi"), Some(64 << 20));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("100"), Some(100));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(cpu_milli("x"), None);
    }
}
