//! Health checks as Docker runs them: the configuration (an image's HEALTHCHECK or
//! `--health-*` flags) and the state machine starting → healthy / unhealthy.

use serde::{Deserialize, Serialize};

/// Docker's defaults.
pub const DEFAULT_INTERVAL_NS: u64 = 30_000_000_000;
/// Docker's default timeout.
pub const DEFAULT_TIMEOUT_NS: u64 = 30_000_000_000;
/// Docker's default retries.
pub const DEFAULT_RETRIES: u32 = 3;
/// How many results `inspect` keeps.
const LOG_ENTRIES: usize = 5;

/// A health check: the image config's `Healthcheck` object (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["CMD", arg…]`, `["CMD-SHELL", "command"]`, `["NONE"]` (disabled) or empty (inherit).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Between checks; 0 = default.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub interval: u64,
    /// For one check; 0 = default.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub timeout: u64,
    /// Failures in this time after start do not count; 0 = none.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub start_period: u64,
    /// Consecutive failures that make the container unhealthy; 0 = default.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub retries: u32,
}

/// A field sent as `null` (as Go clients send unset ones): its default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl HealthConfig {
    /// The flags' settings over the image's, as Docker merges them (a flag wins field by field).
    pub fn merge(
        image: Option<&HealthConfig>,
        flags: Option<&HealthConfig>,
    ) -> Option<HealthConfig> {
        let mut c = image.cloned().unwrap_or_default();
        if let Some(f) = flags {
            if !f.test.is_empty() {
                c.test = f.test.clone();
            }
            if f.interval != 0 {
                c.interval = f.interval;
            }
            if f.timeout != 0 {
                c.timeout = f.timeout;
            }
            if f.start_period != 0 {
                c.start_period = f.start_period;
            }
            if f.retries != 0 {
                c.retries = f.retries;
            }
        }
        (!c.test.is_empty() && c.test[0] != "NONE").then_some(c)
    }

    /// The command to run in the container, or why the test is malformed.
    pub fn command(&self) -> Result<Vec<String>, String> {
        match self.test.first().map(String::as_str) {
            Some("CMD") if self.test.len() > 1 => Ok(self.test[1..].to_vec()),
            Some("CMD-SHELL") if self.test.len() == 2 => {
                Ok(vec!["/bin/sh".into(), "-c".into(), self.test[1].clone()])
            }
            _ => Err(format!(
                "invalid health check test {:?}: expected [\"CMD\", …] or [\"CMD-SHELL\", command]",
                self.test
            )),
        }
    }

    /// Interval, timeout and retries with the defaults filled in.
    pub fn effective(&self) -> (u64, u64, u32) {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        (
            or(self.interval, DEFAULT_INTERVAL_NS),
            or(self.timeout, DEFAULT_TIMEOUT_NS),
            if self.retries == 0 {
                DEFAULT_RETRIES
            } else {
                self.retries
            },
        )
    }
}

/// One check's result, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    /// RFC 3339.
    pub start: String,
    /// RFC 3339.
    pub end: String,
    /// 0 healthy, 1 unhealthy, -1 could not run.
    pub exit_code: i64,
    /// Its output (trimmed to 4 KiB).
    pub output: String,
}

/// A container's health: `State.Health` in `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    /// Consecutive failures.
    pub failing_streak: u32,
    /// The last results, oldest first.
    pub log: Vec<Probe>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            status: "starting".into(),
            failing_streak: 0,
            log: Vec::new(),
        }
    }
}

impl Health {
    /// Records a result; `in_start_period` says whether the container is still in its start
    /// period. Returns the new status when it changed.
    pub fn record(&mut self, probe: Probe, retries: u32, in_start_period: bool) -> Option<String> {
        let ok = probe.exit_code == 0;
        self.log.push(probe);
        if self.log.len() > LOG_ENTRIES {
            self.log.remove(0);
        }
        let before = self.status.clone();
        if ok {
            self.failing_streak = 0;
            self.status = "healthy".into();
        } else if !(in_start_period && self.status == "starting") {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = "unhealthy".into();
            }
        }
        (self.status != before).then(|| self.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(code: i64) -> Probe {
        Probe {
            start: String::new(),
            end: String::new(),
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn transitions_follow_docker() {
        let mut h = Health::default();
        // Failures in the start period do not count while starting.
        assert_eq!(h.record(probe(1), 2, true), None);
        assert_eq!(h.failing_streak, 0);
        assert_eq!(h.record(probe(0), 2, true), Some("healthy".into()));
        assert_eq!(h.record(probe(1), 2, false), None);
        assert_eq!(h.record(probe(1), 2, false), Some("unhealthy".into()));
        assert_eq!(h.failing_streak, 2);
        assert_eq!(h.record(probe(0), 2, false), Some("healthy".into()));
        for _ in 0..10 {
            h.record(probe(0), 2, false);
        }
        assert_eq!(h.log.len(), LOG_ENTRIES);
    }

    #[test]
    fn flags_override_the_image_and_none_disables() {
        let image = HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval: 5,
            retries: 7,
            ..Default::default()
        };
        let flags = HealthConfig {
            test: vec!["CMD-SHELL".into(), "exit 0".into()],
            interval: 1,
            ..Default::default()
        };
        let m = HealthConfig::merge(Some(&image), Some(&flags)).unwrap();
        assert_eq!(m.command().unwrap(), ["/bin/sh", "-c", "exit 0"]);
        assert_eq!((m.interval, m.retries), (1, 7));
        let none = HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(HealthConfig::merge(Some(&image), Some(&none)), None);
        assert_eq!(HealthConfig::merge(None, None), None);
        assert!(HealthConfig {
            test: vec!["CMD".into()],
            ..Default::default()
        }
        .command()
        .is_err());
    }
}
