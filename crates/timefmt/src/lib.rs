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
        // Digits beyond any representable time are no time, not an overflow.
        return secs.checked_mul(1_000_000_000)?.checked_add(nanos);
    }
    parse_duration(s).map(|d| now - d as i128)
}

/// Parses a Go-style duration (`1h30m`, `10s`, `250ms`, `1.5s`, `3µs`) into nanoseconds,
/// exactly (a fraction below a nanosecond is dropped). `None` for anything else, and for a
/// duration beyond `u128` nanoseconds.
pub fn parse_duration(s: &str) -> Option<u128> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let whole = &rest[..whole_len];
        rest = &rest[whole_len..];
        let frac = match rest.strip_prefix('.') {
            Some(after) => {
                let n = after.bytes().take_while(u8::is_ascii_digit).count();
                rest = &after[n..];
                &after[..n]
            }
            None => "",
        };
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        // Units are letters, µ (U+00B5) and μ (U+03BC) among them, as Go's time.ParseDuration.
        let unit_len: usize = rest
            .chars()
            .take_while(|c| c.is_alphabetic())
            .map(char::len_utf8)
            .sum();
        let mult: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        // The fraction's first 20 digits, scaled by the unit (beyond that, less than 1 ns).
        let frac = &frac[..frac.len().min(20)];
        let frac_ns = if frac.is_empty() {
            0
        } else {
            frac.parse::<u128>().ok()?.checked_mul(mult)? / 10u128.pow(frac.len() as u32)
        };
        total = total
            .checked_add(whole.checked_mul(mult)?)?
            .checked_add(frac_ns)?;
    }
    Some(total)
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

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        /// The last second of year 9999: RFC 3339 has four-digit years.
        const MAX_SECS: i64 = 253_402_300_799;

        proptest! {
            #[test]
            fn rfc3339_round_trips(secs in 0..=MAX_SECS, nanos in 0u32..1_000_000_000) {
                let s = rfc3339(secs, nanos);
                prop_assert_eq!(
                    parse_rfc3339(&s),
                    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos)),
                    "{}", s
                );
            }

            #[test]
            fn an_offset_is_the_same_instant(secs in 86_400..MAX_SECS - 86_400, h in 0i64..24, m in 0i64..60, east in any::<bool>()) {
                let utc = parse_rfc3339(&rfc3339(secs, 0)).unwrap();
                let shift = (h * 3600 + m * 60) * if east { 1 } else { -1 };
                let local = rfc3339(secs + shift, 0);
                let with_offset = format!("{}{}{h:02}:{m:02}", &local[..19], if east { '+' } else { '-' });
                prop_assert_eq!(parse_rfc3339(&with_offset), Some(utc), "{}", with_offset);
            }

            #[test]
            fn go_durations_sum_their_units(
                h in 0u64..10_000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000, us in 0u64..1000, ns in 0u64..1000,
                micro in prop::sample::select(vec!["us", "\u{b5}s", "\u{3bc}s"]),
            ) {
                let text = format!("{h}h{m}m{s}s{ms}ms{us}{micro}{ns}ns");
                let want = u128::from(((h * 60 + m) * 60 + s) * 1_000_000_000 + ms * 1_000_000 + us * 1_000 + ns);
                prop_assert_eq!(parse_duration(&text), Some(want), "{}", text);
            }

            #[test]
            fn time_arguments_never_panic(s in "\\PC{0,40}", digits in "[0-9]{1,60}(\\.[0-9]{0,12})?") {
                let now = 1_700_000_000 * 1_000_000_000;
                let _ = parse_time_arg(&s, now);
                let _ = parse_time_arg(&digits, now);
                let _ = parse_rfc3339(&s);
                let _ = parse_duration(&s);
                let _ = parse_duration(&digits);
            }
        }
    }
}
