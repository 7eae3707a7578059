//! Cron schedules as CronJobs take them (the standard five fields of robfig/cron, which
//! Kubernetes uses): minute, hour, day of month, month, day of week, each `*`, `?`, a
//! value, a range `a-b`, a step `*/n` or `a-b/n` or `a/n`, or a list of those; month and
//! weekday names (`jan`, `mon`); `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly` and `@every <duration>`. When both day fields are restricted, a
//! day matching either runs, as in cron. Times are computed in the CronJob's time zone
//! (the system's tz database), so DST changes fall as cron's do.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    doms: u32,
    months: u16,
    dows: u8,
    dom_star: bool,
    dow_star: bool,
    every: Option<i64>,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], base: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + base);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// The bits of one field, within `lo..=hi`.
fn field(
    spec: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (a, b) = if range == "*" || range == "?" {
            if step.is_none() {
                star = true;
            }
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, name_base)?, value(b, names, name_base)?)
        } else {
            let a = value(range, names, name_base)?;
            (a, if step.is_some() { hi } else { a })
        };
        if a < lo {
            return Err(format!(
                "beginning of range ({a}) below minimum ({lo}): {part}"
            ));
        }
        if b > hi {
            return Err(format!("end of range ({b}) above maximum ({hi}): {part}"));
        }
        if a > b {
            return Err(format!(
                "beginning of range ({a}) beyond end of range ({b}): {part}"
            ));
        }
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong as robfig/cron does.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if let Some(d) = s.strip_prefix("@every ") {
            let n = timefmt::parse_duration(d.trim())
                .ok_or_else(|| format!("failed to parse duration {s}"))?;
            let secs = (n / 1_000_000_000) as i64;
            if secs < 1 {
                return Err(format!("failed to parse duration {s}"));
            }
            return Ok(Schedule {
                minutes: 0,
                hours: 0,
                doms: 0,
                months: 0,
                dows: 0,
                dom_star: true,
                dow_star: true,
                every: Some(secs),
            });
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            x if x.starts_with('@') => return Err(format!("unrecognized descriptor: {x}")),
            x => x,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {expanded}",
                f.len()
            ));
        }
        let (minutes, _) = field(f[0], 0, 59, &[], 0)?;
        let (hours, _) = field(f[1], 0, 23, &[], 0)?;
        let (doms, dom_star) = field(f[2], 1, 31, &[], 0)?;
        let (months, _) = field(f[3], 1, 12, &MONTHS, 1)?;
        let (mut dows, dow_star) = field(f[4], 0, 7, &DAYS, 0)?;
        if dows & (1 << 7) != 0 {
            dows |= 1;
        }
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            doms: doms as u32,
            months: months as u16,
            dows: dows as u8,
            dom_star,
            dow_star,
            every: None,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.doms & (1 << d.day()) != 0;
        let dow = self.dows & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time strictly after `after` that the schedule fires, in `tz`.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        if let Some(secs) = self.every {
            return after.checked_add(secs.seconds()).ok();
        }
        let z = after.to_zoned(tz.clone());
        // The next whole minute after `after`, as a wall-clock time.
        let mut t: DateTime = z
            .datetime()
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        for _ in 0..100_000 {
            if self.months & (1 << t.month()) == 0 {
                let first = Date::new(t.year(), t.month(), 1).ok()?;
                t = first
                    .checked_add(1.month())
                    .ok()?
                    .to_datetime(Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A wall-clock time skipped by DST runs at the shifted instant, as cron does.
            let zoned: Zoned = t.to_zoned(tz.clone()).ok()?;
            let ts = zoned.timestamp();
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// The time zone named by a CronJob's `timeZone` (UTC when unset).
pub fn zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("") | Some("UTC") | Some("Etc/UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| format!("unknown time zone {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn steps_ranges_and_names() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        let tz = TimeZone::UTC;
        // 2026-12-04 is a Friday.
        assert_eq!(
            s.next(at("2026-12-04T17:50:00Z"), &tz),
            Some(at("2026-12-07T09:00:00Z"))
        );
        assert_eq!(
            s.next(at("2026-12-07T09:00:00Z"), &tz),
            Some(at("2026-12-07T09:15:00Z"))
        );
        let every = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            every.next(at("2026-12-07T09:00:30Z"), &tz),
            Some(at("2026-12-07T09:01:00Z"))
        );
    }

    #[test]
    fn both_day_fields_mean_either() {
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        // The 13th (Sunday 2026-12-13) or any Friday (2026-12-11), whichever comes first.
        assert_eq!(
            s.next(at("2026-12-10T00:00:00Z"), &TimeZone::UTC),
            Some(at("2026-12-11T00:00:00Z"))
        );
        assert_eq!(
            s.next(at("2026-12-11T00:00:00Z"), &TimeZone::UTC),
            Some(at("2026-12-13T00:00:00Z"))
        );
    }

    #[test]
    fn time_zones_and_macros() {
        let tz = zone(Some("America/New_York")).unwrap();
        let s = Schedule::parse("@daily").unwrap();
        // Midnight in New York is 05:00 UTC in winter.
        assert_eq!(
            s.next(at("2026-12-06T12:00:00Z"), &tz),
            Some(at("2026-12-07T05:00:00Z"))
        );
        let e = Schedule::parse("@every 90s").unwrap();
        assert_eq!(
            e.next(at("2026-12-06T12:00:00Z"), &tz),
            Some(at("2026-12-06T12:01:30Z"))
        );
        assert!(zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("* * * *")
            .unwrap_err()
            .contains("expected exactly 5 fields"));
        assert!(Schedule::parse("61 * * * *")
            .unwrap_err()
            .contains("above maximum (59)"));
        assert!(Schedule::parse("x * * * *")
            .unwrap_err()
            .contains("failed to parse int"));
        assert!(Schedule::parse("@sometimes")
            .unwrap_err()
            .contains("unrecognized descriptor"));
    }
}
