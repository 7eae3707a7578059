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

/// Any quantity in thousandths of its unit, rounded up as Kubernetes' `MilliValue`
/// (`12345n` = 1, `250m` = 250, `1.5` = 1500, `64Mi` = 67108864000).
pub fn milli(q: &str) -> Option<i64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 16] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("", 1.0),
    ];
    for (s, m) in suffixes {
        if let Some(n) = q.strip_suffix(s) {
            if s.is_empty() || !n.is_empty() {
                let v = n.parse::<f64>().ok()? * m * 1000.0;
                // Exact thousandths stay exact in spite of binary floating point.
                let r = v.round();
                return Some(if (v - r).abs() < 1e-6 { r } else { v.ceil() } as i64);
            }
        }
    }
    None
}

/// Thousandths as Kubernetes writes a decimal quantity (`250m`, `2`, `3k`, `104857600`).
pub fn format_milli(m: i64) -> String {
    if m % 1000 != 0 {
        return format!("{m}m");
    }
    let mut v = m / 1000;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if v == 0 || v % 1000 != 0 {
            return format!("{v}{suffix}");
        }
        v /= 1000;
    }
    format!("{v}E")
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
        assert_eq!(milli("12345n"), Some(1));
        assert_eq!(milli("250m"), Some(250));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(milli("64Mi"), Some(67_108_864_000));
        assert_eq!(milli("1536Ki"), Some(1_572_864_000));
        assert_eq!(milli("0"), Some(0));
        assert_eq!(milli("5u"), Some(1));
        assert_eq!(milli("m"), None);
        assert_eq!(format_milli(250), "250m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(3_000_000), "3k");
        assert_eq!(format_milli(104_857_600_000), "104857600");
        assert_eq!(format_milli(0), "0");
    }
}
