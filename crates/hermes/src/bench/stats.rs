//! Numbers the scenarios share: percentiles, and the broker's RSS and CPU time from /proc.

use std::time::Duration;

use serde_json::{Map, Value};

/// Percentile `p` (0–100) of sorted samples; 0 when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// p50, p99 and max in milliseconds, as a JSON object.
pub fn latency_summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    serde_json::json!({
        "samples": samples.len(),
        "p50_ms": ms(percentile(&samples, 50.0)),
        "p99_ms": ms(percentile(&samples, 99.0)),
        "max_ms": ms(samples.last().copied().unwrap_or_default()),
    })
}

/// Resident set size of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds a process has used (Linux clock ticks are 1/100 s).
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A report as indented `key: value` lines.
pub fn render_text(v: &Value) -> String {
    fn walk(v: &Value, indent: usize, out: &mut String) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                match v {
                    Value::Object(_) => {
                        out.push_str(&format!("{:indent$}{k}:\n", ""));
                        walk(v, indent + 2, out);
                    }
                    other => out.push_str(&format!("{:indent$}{k}: {other}\n", "")),
                }
            }
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}

/// Adds the broker's and our own CPU seconds spent between two readings, per unit of work.
pub fn cpu_report(report: &mut Map<String, Value>, pid: Option<u32>, before: (Option<f64>, Option<f64>), units: u64) {
    let after = (cpu_secs(pid), cpu_secs(None));
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => serde_json::json!({
            "cpu_secs": ((a - b) * 100.0).round() / 100.0,
            "cpu_us_per_msg": if units == 0 { 0.0 } else { ((a - b) * 1e6 / units as f64 * 100.0).round() / 100.0 },
        }),
        _ => Value::Null,
    };
    if pid.is_some() {
        report.insert("broker_cpu".into(), per(after.0, before.0));
    }
    report.insert("bench_cpu".into(), per(after.1, before.1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn own_cpu_and_rss_are_readable() {
        assert!(cpu_secs(None).is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
