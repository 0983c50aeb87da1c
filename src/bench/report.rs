//! Counting outcomes and latencies ([`Stats`], one per client, merged at the
//! end) and the final [`LoadReport`], printed as human text and as JSON.

use super::history::Status;
use super::LoadConfig;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// Largest latency the histogram tells apart, in microseconds (one hour);
/// longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the histogram keeps (0.1% resolution).
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in microseconds.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Outcomes and latencies of measured commands.
#[derive(Clone, Debug)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Latency of successful commands, in microseconds.
    pub latency_us: Histogram<u64>,
    /// What the bank workload saw (zero for the others).
    pub bank: BankStats,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ok: 0,
            failed: 0,
            unknown: 0,
            latency_us: new_histogram(),
            bank: BankStats::default(),
        }
    }
}

/// Counts of the bank workload, warm-up included (so no violation goes
/// unreported). Part of the JSON report as `bank`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BankStats {
    /// Transfers whose CHECK + PUT command committed.
    pub transfers: u64,
    /// Transfer attempts aborted by a CHECK that did not hold (another
    /// client changed a balance after it was read); each was retried with
    /// fresh reads.
    pub transfers_aborted: u64,
    /// Reads of every balance that succeeded.
    pub reads: u64,
    /// Reads whose balances did not sum to accounts x the initial balance
    /// (or held something that is not a balance). Always zero unless
    /// something is broken (or another workload wrote the table).
    pub violations: u64,
}

impl BankStats {
    fn merge(&mut self, other: &BankStats) {
        self.transfers += other.transfers;
        self.transfers_aborted += other.transfers_aborted;
        self.reads += other.reads;
        self.violations += other.violations;
    }
}

impl Stats {
    /// Counts one command; the latency of a successful one goes into the
    /// histogram (failures can be instant or a full timeout, which would say
    /// more about the failure than about the system's speed).
    pub fn record(&mut self, status: Status, latency: Duration) {
        match status {
            Status::Ok => {
                self.ok += 1;
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
            }
            Status::Fail => self.failed += 1,
            Status::Unknown => self.unknown += 1,
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.unknown += other.unknown;
        self.bank.merge(&other.bank);
        if let Err(e) = self.latency_us.add(&other.latency_us) {
            // Cannot happen: every histogram has the same bounds.
            tracing::error!("cannot merge latency histograms: {e:?}");
        }
    }

    pub fn commands(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }
}

/// Latency percentiles of successful commands, in milliseconds (all zero
/// when none succeeded).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    fn of(hist: &Histogram<u64>) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        if hist.is_empty() {
            return LatencySummary {
                p50: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        LatencySummary {
            p50: ms(hist.value_at_quantile(0.50)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
            mean: round_to(hist.mean() / 1000.0, 3),
        }
    }
}

/// The result of a load run. Serialized as the JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub config: LoadConfig,
    /// Measured time (after the warm-up), in seconds.
    pub elapsed_s: f64,
    /// Measured commands by outcome.
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Successful commands per second (an op is one command, whatever its
    /// number of operations).
    pub throughput_ops_per_s: f64,
    pub latency_ms: LatencySummary,
    /// Only for `--workload bank`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank: Option<BankStats>,
    /// Commands that spanned partitions (transactions), warm-up included:
    /// committed, retried after a conflict (invisible to the workload),
    /// aborted as a whole (e.g. a CHECK).
    pub transactions: crate::client::TxnCounts,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl LoadReport {
    pub fn new(config: &LoadConfig, stats: &Stats, elapsed: Duration) -> LoadReport {
        let secs = elapsed.as_secs_f64();
        let throughput = if secs > 0.0 {
            stats.ok as f64 / secs
        } else {
            0.0
        };
        LoadReport {
            config: config.clone(),
            elapsed_s: round_to(secs, 3),
            ok: stats.ok,
            failed: stats.failed,
            unknown: stats.unknown,
            throughput_ops_per_s: round_to(throughput, 1),
            latency_ms: LatencySummary::of(&stats.latency_us),
            bank: (config.workload == super::Workload::Bank).then_some(stats.bank),
            transactions: crate::client::TxnCounts::default(),
        }
    }

    /// The report as one line of JSON (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human-readable report, several lines, each ending in `\n`.
    pub fn to_human(&self) -> String {
        let c = &self.config;
        let l = &self.latency_ms;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "workload   {} ({}), {} keys {table}0..{table}{}, {}-byte values",
            c.workload.name(),
            c.workload.describe(),
            c.distribution.name(),
            c.keys.saturating_sub(1),
            c.value_size,
            table = c.table,
        );
        let _ = writeln!(
            out,
            "clients    {} sequential, seed {}, warm-up {} s",
            c.clients, c.seed, c.warmup_s
        );
        let _ = writeln!(
            out,
            "commands   {} ok, {} failed, {} unknown outcome in {:.2} s",
            self.ok, self.failed, self.unknown, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "throughput {:.1} ops/s (op = one command, successful ones)",
            self.throughput_ops_per_s
        );
        let _ = writeln!(
            out,
            "latency    p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms, mean {:.3} ms",
            l.p50, l.p99, l.p999, l.max, l.mean
        );
        let t = &self.transactions;
        if t.committed + t.retries + t.aborted > 0 {
            let _ = writeln!(
                out,
                "txns       {} spanning partitions committed, {} conflict retries (inside the client), {} aborted as a whole",
                t.committed, t.retries, t.aborted
            );
        }
        if let Some(b) = &self.bank {
            let _ = writeln!(
                out,
                "bank       {} transfers committed, {} aborted by CHECK (retried), {} reads of all balances, {} invariant violations (sum != {} x {}){}",
                b.transfers,
                b.transfers_aborted,
                b.reads,
                b.violations,
                c.keys,
                super::workload::BANK_INITIAL_BALANCE,
                if b.violations > 0 {
                    "; A BUG: please report it"
                } else {
                    ""
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Distribution, Workload};

    fn config() -> LoadConfig {
        LoadConfig {
            workload: Workload::A,
            distribution: Distribution::Uniform,
            clients: 2,
            table: "usertable".into(),
            keys: 10,
            value_size: 5,
            duration_s: Some(1),
            ops_limit: None,
            warmup_s: 0,
            seed: 42,
            progress_ms: 0,
            key_stride: 1,
        }
    }

    #[test]
    fn merges_counts_and_latencies() {
        let mut a = Stats::default();
        a.record(Status::Ok, Duration::from_millis(1));
        a.record(Status::Fail, Duration::from_secs(5));
        let mut b = Stats::default();
        b.record(Status::Ok, Duration::from_millis(3));
        b.record(Status::Unknown, Duration::from_secs(5));
        a.merge(&b);
        assert_eq!((a.ok, a.failed, a.unknown, a.commands()), (2, 1, 1, 4));
        assert_eq!(a.latency_us.len(), 2);

        let report = LoadReport::new(&config(), &a, Duration::from_secs(2));
        assert_eq!(report.throughput_ops_per_s, 1.0);
        assert_eq!(report.latency_ms.p50, 1.0);
        assert!((report.latency_ms.max - 3.0).abs() < 0.01);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["config"]["workload"], "a");
        assert_eq!(json["config"]["clients"], 2);
        assert_eq!(json["ok"], 2);
        assert_eq!(json["unknown"], 1);
        assert!(json["latency_ms"]["p999"].is_number());
        assert!(report
            .to_human()
            .contains("2 ok, 1 failed, 1 unknown outcome"));
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let report = LoadReport::new(&config(), &Stats::default(), Duration::ZERO);
        assert_eq!(report.throughput_ops_per_s, 0.0);
        assert_eq!(report.latency_ms.max, 0.0);
    }
}
