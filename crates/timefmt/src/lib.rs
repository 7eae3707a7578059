//! RFC 3339 timestamps (UTC, nanoseconds), as OCI runtime state, image configs and the
//! Docker and Kubernetes APIs write them. No dependencies.

#![forbid(unsafe_code)]

/// `secs`/`nanos` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// The current time in RFC 3339.
pub fn now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos() as i128
}

/// Parses an RFC 3339 timestamp (`2026-11-21T19:05:00Z`, fractional seconds and a numeric
/// offset allowed) into nanoseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut v: i128 = 0;
        for (i, c) in frac[..digits].bytes().enumerate() {
            if i < 9 {
                v = v * 10 + i128::from(c - b'0');
            }
        }
        for _ in digits..9 {
            v *= 10;
        }
        nanos = v;
        rest = &frac[digits..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let mi: i64 = rest.get(4..6)?.parse().ok()?;
            let v = h * 3600 + mi * 60;
            if rest.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss - offset;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Parses a point in time as `docker logs --since/--until` and `docker events` take it: an
/// RFC 3339 timestamp, Unix seconds with optional fraction (`1700000000.5`), or a duration
/// before `now` (`10m`, `1h30m`, `45s`, `250ms`). Returns nanoseconds since the epoch.
pub fn parse_time_arg(s: &str, now: i128) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    if s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let secs: i128 = whole.parse().ok()?;
        let mut nanos: i128 = 0;
        for (i, c) in frac.bytes().take(9).enumerate() {
            nanos += i128::from(c - b'0') * 10i128.pow(8 - i as u32);
        }
        return Some(secs * 1_000_000_000 + nanos);
    }
    parse_duration(s).map(|d| now - d as i128)
}

/// Parses a Go-style duration (`1h30m`, `10s`, `250ms`, `1.5s`) into nanoseconds.
pub fn parse_duration(s: &str) -> Option<u128> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.bytes().take_while(|c| c.is_ascii_alphabetic()).count();
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * mult;
    }
    (total.is_finite() && total >= 0.0).then_some(total as u128)
}

/// Formats a duration like Docker's "Up 5 minutes" / "Exited (0) 2 hours ago" phrases.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86400),
        _ => format!("{} weeks", s / 604_800),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_what_it_prints_and_docker_time_args() {
        for (secs, nanos) in [(0i64, 0u32), (951_782_400, 5), (1_795_287_900, 123_456_789)] {
            let s = super::rfc3339(secs, nanos);
            assert_eq!(
                super::parse_rfc3339(&s),
                Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos)),
                "{s}"
            );
        }
        assert_eq!(
            super::parse_rfc3339("1970-01-01T01:00:00+01:00"),
            Some(0),
            "offset"
        );
        assert_eq!(super::parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(super::parse_rfc3339("yesterday"), None);
        let now = 10_000 * 1_000_000_000;
        assert_eq!(
            super::parse_time_arg("10s", now),
            Some(now - 10_000_000_000)
        );
        assert_eq!(
            super::parse_time_arg("1m30s", now),
            Some(now - 90_000_000_000)
        );
        assert_eq!(
            super::parse_time_arg("1700000000.5", now),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(super::parse_time_arg("soon", now), None);
        assert_eq!(super::parse_duration("250ms"), Some(250_000_000));
        assert_eq!(super::human_duration(3), "3 seconds");
        assert_eq!(super::human_duration(600), "10 minutes");
    }

    #[test]
    fn known_dates() {
        for (secs, nanos, want) in [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000000005Z"),
            (1_795_287_900, 0, "2026-11-21T19:05:00.000000000Z"),
            (-86_400, 0, "1969-12-31T00:00:00.000000000Z"),
        ] {
            assert_eq!(super::rfc3339(secs, nanos), want);
        }
    }
}
