//! The load generator (`benchmark load`) and its history files.
//!
//! ```text
//!  LoadArgs (flags) --LoadArgs::to_config(map)--> LoadConfig (validated)
//!        │
//!  run_load (run.rs)
//!    N sequential clients, each a client Session (one command at a time),
//!    each with its own seeded SmallRng (seed + client index) and histogram
//!        │ commands from CommandGen (workload.rs): mix, keys, values
//!        │ (bank: Bank builds each transfer from what its first command read)
//!        │ one HistoryRecord per command (history.rs) -> buffered writer task
//!        ▼
//!  LoadReport (report.rs): ok / failed / unknown counts, throughput,
//!  p50/p99/p999/max latency -> human text and one JSON line on stdout
//! ```
//! Design points:
//! - Everything that is not deterministic goes through the [`Runtime`]:
//!   `now`/`sleep` for timing, `spawn` for tasks, `rand_u64` only for the
//!   default seed. So a run can be driven by the simulator, and a seed
//!   replays each client's command stream.
//! - Clients share nothing on the hot path but a few atomic counters
//!   (progress, the `--ops` budget); histograms are merged at the end.
//! - Statuses follow what is known of a command's effect ([`history::Status`]):
//!   refused or unavailable = `fail`; timed out or partly applied = `unknown`.
//! - An "op" in throughput is one command, whatever its number of operations.
//!   Throughput and latency count successful commands after the warm-up.
//! - Output: progress and errors on stderr; only the report on stdout.

pub mod history;
pub mod report;
pub mod run;
pub mod workload;

pub use history::{HistoryOp, HistoryRecord, HistoryResult, Status};
pub use report::{LoadReport, Stats};
pub use run::{run_load, LoadError};
pub use workload::{Bank, CommandGen, Distribution, KeyChooser, Workload, Zipfian};

use crate::client::Client;
use crate::map::PartitionMap;
use crate::op::VALUE_LEN_MAX;
use crate::rt::Runtime;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Most concurrent clients.
pub const CLIENTS_MAX: u64 = 100_000;
/// Longest duration or warm-up, in seconds (one year).
pub const SECS_MAX: u64 = 365 * 24 * 3600;
/// Measured duration when neither `--duration-s` nor `--ops` is given.
pub const DEFAULT_DURATION_S: u64 = 10;
/// Bits kept of a random default seed (integers up to 2^53 are exact in JSON
/// doubles).
const SEED_RANDOM_MASK: u64 = (1 << 53) - 1;
/// Buffer of the history file writer.
const HISTORY_BUFFER_BYTES: usize = 1 << 20;

/// Flags of `benchmark load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Concurrent sequential clients, each with one command outstanding at a time.
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX))]
    pub clients: u64,
    /// Measured run time in seconds, after the warm-up [default: 10, or no time limit when --ops is given].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=SECS_MAX))]
    pub duration_s: Option<u64>,
    /// Stop after this many measured commands, over all clients [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Size of the key space: key numbers 0..N-1 of the table (bank: N accounts, spread evenly over the table's initial key space so they fall in all its partitions).
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Table to load [default: the cluster's first table, by name].
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Size of each written value in bytes (random printable ASCII).
    #[arg(long, default_value_t = 100, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=VALUE_LEN_MAX as u64))]
    pub value_size: u64,
    /// Command mix. bank: each account starts at 100 (an absent account holds 100); a transfer GETs two accounts, then CHECKs both and PUTs both new balances, retried when a CHECK fails; 10% of turns SCAN every account and check the sum; --value-size does not apply.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Which keys commands pick.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Random seed; client i uses seed + i, so a seed replays the command streams [default: random, shown in the report].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Warm-up in seconds: commands run but are not counted.
    #[arg(long, default_value_t = 0, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=SECS_MAX))]
    pub warmup_s: u64,
    /// Write one JSON line per command issued to FILE (format: docs/protocol.md, "Histories") [default: none].
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Print only the JSON report on stdout (no human-readable text).
    #[arg(long)]
    pub json: bool,
    /// Print a progress line on stderr every MS milliseconds (0: never).
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub progress_ms: u64,
}

/// A validated load configuration; also the `config` part of the JSON report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadConfig {
    pub workload: Workload,
    pub distribution: Distribution,
    pub clients: usize,
    pub table: String,
    pub keys: u64,
    pub value_size: usize,
    /// Measured seconds; `None`: until `ops_limit` commands ran.
    pub duration_s: Option<u64>,
    pub ops_limit: Option<u64>,
    pub warmup_s: u64,
    pub seed: u64,
    #[serde(skip)]
    pub progress_ms: u64,
    /// The distance between the key numbers the load uses: 1 (keys
    /// 0..keys-1), except for bank, whose accounts are every
    /// `key_stride`-th key so they spread over the table's partitions.
    pub key_stride: u64,
}

impl LoadArgs {
    /// Checks the flags against the cluster's `map`; `random_seed` is used
    /// when no `--seed` was given. The error is a one-line reason.
    pub fn to_config(&self, map: &PartitionMap, random_seed: u64) -> Result<LoadConfig, String> {
        let table = pick_table(self.table.as_deref(), map)?;
        let key_stride = match self.workload {
            Workload::Bank => map
                .tables
                .get(&table)
                .map_or(1, |t| (t.key_space / self.keys).max(1)),
            _ => 1,
        };
        let too_big = |flag: &str| format!("--{flag} is too large for this machine");
        let duration_s = match (self.duration_s, self.ops) {
            (None, None) => Some(DEFAULT_DURATION_S),
            (duration, _) => duration,
        };
        Ok(LoadConfig {
            workload: self.workload,
            distribution: self.distribution,
            clients: usize::try_from(self.clients).map_err(|_| too_big("clients"))?,
            table,
            keys: self.keys,
            value_size: usize::try_from(self.value_size).map_err(|_| too_big("value-size"))?,
            duration_s,
            ops_limit: self.ops,
            warmup_s: self.warmup_s,
            // A random seed keeps to 53 bits, so JSON readers that parse
            // numbers as doubles get it exactly.
            seed: self.seed.unwrap_or(random_seed & SEED_RANDOM_MASK),
            progress_ms: self.progress_ms,
            key_stride,
        })
    }
}

/// The requested table if the cluster has it, else the first table by name.
fn pick_table(requested: Option<&str>, map: &PartitionMap) -> Result<String, String> {
    let known = || map.tables.keys().cloned().collect::<Vec<_>>().join(", ");
    match requested {
        Some(name) if map.tables.contains_key(name) => Ok(name.to_string()),
        Some(name) => Err(format!(
            "unknown table '{name}' (the cluster has: {})",
            known()
        )),
        None => map
            .tables
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| "the cluster has no tables".to_string()),
    }
}

fn open_history(path: &Path) -> Result<Box<dyn Write + Send>, String> {
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create history file {}: {e}", path.display()))?;
    Ok(Box::new(std::io::BufWriter::with_capacity(
        HISTORY_BUFFER_BYTES,
        file,
    )))
}

/// One line on stderr saying what is about to run.
fn start_line(config: &LoadConfig) -> String {
    let limit = match (config.duration_s, config.ops_limit) {
        (Some(d), Some(n)) => format!("{d} s or {n} commands"),
        (Some(d), None) => format!("{d} s"),
        (None, Some(n)) => format!("{n} commands"),
        (None, None) => "ever".to_string(),
    };
    format!(
        "load: workload {} on table {}, {} clients, {} {} keys, for {limit} after {} s warm-up, seed {}",
        config.workload.name(),
        config.table,
        config.clients,
        config.keys,
        config.distribution.name(),
        config.warmup_s,
        config.seed
    )
}

/// Prints the report on stdout: the human text then the JSON line, or only
/// the JSON line.
fn print_report(report: &LoadReport, json_only: bool) {
    let mut text = String::new();
    if !json_only {
        text.push_str(&report.to_human());
    }
    text.push_str(&report.to_json());
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .is_err()
    {
        eprintln!("error: cannot write the report to stdout");
    }
}

/// `benchmark load`: validates the flags, runs the load, prints the report.
/// Returns the process exit code: 0 on success, 2 for bad flags, 1 if the
/// run failed (history not writable) or no command succeeded.
pub async fn run_load_cli<R: Runtime>(rt: R, client: Client<R>, args: LoadArgs) -> i32 {
    let config = match args.to_config(&client.map(), rt.rand_u64()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let history = match args.history.as_deref().map(open_history).transpose() {
        Ok(history) => history,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    eprintln!("{}", start_line(&config));
    let report = match run_load(rt, client, &config, history).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    print_report(&report, args.json);
    if report.ok == 0 {
        eprintln!("error: no command succeeded");
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied())).map(|c| c.load)
    }

    fn map() -> PartitionMap {
        let servers = ["127.0.0.1:1".parse().unwrap()];
        let tables = [("usertable".to_string(), 100), ("orders".to_string(), 10)];
        PartitionMap::build(&tables, &servers, 1).unwrap()
    }

    #[test]
    fn defaults_follow_the_documentation() {
        let config = parse(&[]).unwrap().to_config(&map(), 99).unwrap();
        let random = parse(&[]).unwrap().to_config(&map(), u64::MAX).unwrap();
        assert_eq!(random.seed, (1 << 53) - 1, "a random seed is exact in JSON");
        assert_eq!(
            config,
            LoadConfig {
                workload: Workload::A,
                distribution: Distribution::Uniform,
                clients: 16,
                table: "orders".into(), // first by name
                keys: 100_000,
                value_size: 100,
                duration_s: Some(10),
                ops_limit: None,
                warmup_s: 0,
                seed: 99,
                progress_ms: 1000,
                key_stride: 1,
            }
        );
    }

    #[test]
    fn flags_set_the_config() {
        let args = parse(&[
            "--clients=4",
            "--ops=500",
            "--keys=7",
            "--table=usertable",
            "--value-size=3",
            "--workload=txn",
            "--distribution=zipfian",
            "--seed=5",
            "--warmup-s=1",
            "--json",
            "--progress-ms=0",
            "--history=/tmp/h",
        ])
        .unwrap();
        assert!(args.json);
        let config = args.to_config(&map(), 99).unwrap();
        assert_eq!(config.duration_s, None, "--ops alone has no time limit");
        assert_eq!(config.ops_limit, Some(500));
        assert_eq!(
            (config.clients, config.keys, config.value_size, config.seed),
            (4, 7, 3, 5)
        );
        assert_eq!(config.workload, Workload::Txn);
        assert_eq!(config.table, "usertable");
        assert_eq!(config.key_stride, 1);
        // Bank spreads its accounts over the table's key space (100 keys).
        let bank = |keys: &str| {
            parse(&["--workload=bank", "--table=usertable", keys])
                .unwrap()
                .to_config(&map(), 0)
                .unwrap()
                .key_stride
        };
        assert_eq!(bank("--keys=10"), 10);
        assert_eq!(bank("--keys=30"), 3);
        assert_eq!(bank("--keys=1000"), 1);
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        for bad in [
            &["--clients=0"][..],
            &["--keys=0"],
            &["--value-size=0"],
            &["--value-size=100000"],
            &["--duration-s=0"],
            &["--workload=x"],
            &["--distribution=normal"],
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let err = parse(&["--table=nope"])
            .unwrap()
            .to_config(&map(), 0)
            .unwrap_err();
        assert_eq!(
            err,
            "unknown table 'nope' (the cluster has: orders, usertable)"
        );
    }
}
