//! Running a load: client tasks, the history writer, progress lines.
//!
//! ```text
//!  run_load
//!    ├─ spawn client 0..N ── loop: plan.next_turn? ─ next_command ─ execute ─ Stats
//!    │        │ HistoryRecord (bounded channel)              │ Stats (when done)
//!    │        ▼                                              ▼
//!    ├─ spawn history writer: JSON lines, buffered   main task: merges Stats, prints
//!    │        flushes when every client is done      a progress line every tick
//!    └─ LoadReport
//! ```
//! Clients share only the read-only [`Plan`] and a few atomic counters; each
//! keeps its own histogram, so the hot path takes no lock. A bank client
//! (`--workload bank`) runs two commands per transfer, the second built from
//! what the first read ([`bank_turn`]).

use super::history::{HistoryOp, HistoryRecord, Status};
use super::report::{LoadReport, Stats};
use super::workload::{
    Bank, BankTurn, CommandGen, KeyChooser, Workload, BANK_TRANSFER_ATTEMPTS_MAX,
};
use super::LoadConfig;
use crate::client::{Client, ClientError, Session};
use crate::op::{Op, OpResult};
use crate::rt::Runtime;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// History records waiting for the writer; clients wait when it is full.
const HISTORY_QUEUE: usize = 16 * 1024;
/// Records the writer takes from the queue at once.
const HISTORY_BATCH: usize = 256;

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot write the history: {0}")]
    History(#[from] io::Error),
    #[error("the history writer stopped unexpectedly")]
    HistoryWriterLost,
    #[error("{0} client task(s) ended without a result")]
    ClientsLost(usize),
}

/// What every task of a run shares: when to measure and stop, what to send,
/// and the counters behind progress lines and `--ops`.
struct Plan {
    start: Instant,
    measure_from: Instant,
    /// `None`: no time limit.
    stop_at: Option<Instant>,
    ops_limit: Option<u64>,
    gen: CommandGen,
    /// The bank workload's accounts, when that is the workload (it drives
    /// its clients itself: a transfer depends on what it read).
    bank: Option<Bank>,
    /// Measured commands started (the `--ops` budget).
    issued: AtomicU64,
    /// Commands finished, warm-up included (progress).
    finished: AtomicU64,
    /// Commands that failed or have an unknown outcome (progress).
    errors: AtomicU64,
    /// Set when the run must end early (the history cannot be written).
    abort: AtomicBool,
}

impl Plan {
    fn new(start: Instant, config: &LoadConfig) -> Plan {
        let measure_from = start
            .checked_add(Duration::from_secs(config.warmup_s))
            .unwrap_or(start);
        let stop_at = config
            .duration_s
            .and_then(|d| measure_from.checked_add(Duration::from_secs(d)));
        let keys = KeyChooser::new(config.distribution, config.keys);
        Plan {
            start,
            measure_from,
            stop_at,
            ops_limit: config.ops_limit,
            gen: CommandGen::new(
                config.table.clone(),
                config.workload,
                keys,
                config.value_size,
            ),
            bank: (config.workload == Workload::Bank).then(|| {
                Bank::new(
                    config.table.clone(),
                    config.keys,
                    config.key_stride,
                    config.distribution,
                )
            }),
            issued: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            abort: AtomicBool::new(false),
        }
    }

    /// Whether a client may start another command at `now`, and if so
    /// whether it is measured (`Some(true)`) or warm-up (`Some(false)`).
    fn next_turn(&self, now: Instant) -> Option<bool> {
        if self.abort.load(Ordering::Relaxed) || self.stop_at.is_some_and(|t| now >= t) {
            return None;
        }
        let measured = now >= self.measure_from;
        if measured {
            if let Some(limit) = self.ops_limit {
                if self.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    return None;
                }
            }
        }
        Some(measured)
    }

    fn count(&self, status: Status) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        if status != Status::Ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Nanoseconds from the run's start to `t` (the history clock).
    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Runs the load described by `config` with `client`, writing one history
/// line per command to `history` if given, and returns the report. Progress
/// lines go to stderr every `config.progress_ms` (0: none).
pub async fn run_load<R: Runtime>(
    rt: R,
    client: Client<R>,
    config: &LoadConfig,
    history: Option<Box<dyn Write + Send>>,
) -> Result<LoadReport, LoadError> {
    let plan = Arc::new(Plan::new(rt.now(), config));
    let txn_before = client.txn_counts();
    let (history_tx, history_done) = match history {
        Some(out) => {
            let (tx, rx) = mpsc::channel(HISTORY_QUEUE);
            let (done_tx, done_rx) = oneshot::channel();
            rt.spawn(write_history(rx, out, plan.clone(), done_tx));
            (Some(tx), Some(done_rx))
        }
        None => (None, None),
    };

    let (results_tx, results_rx) = mpsc::channel(config.clients.max(1));
    for index in 0..config.clients {
        let rng = SmallRng::seed_from_u64(config.seed.wrapping_add(index as u64));
        let task = client_loop(
            rt.clone(),
            client.session(),
            index as u64,
            rng,
            plan.clone(),
            history_tx.clone(),
        );
        let results = results_tx.clone();
        rt.spawn(async move {
            let stats = task.await;
            let _ = results.send(stats).await;
        });
    }
    drop((results_tx, history_tx));

    let progress = (config.progress_ms > 0).then(|| Duration::from_millis(config.progress_ms));
    let (total, reported) = collect(&rt, &plan, results_rx, progress).await;
    let elapsed = rt.now().saturating_duration_since(plan.measure_from);
    if let Some(done) = history_done {
        done.await.map_err(|_| LoadError::HistoryWriterLost)??;
    }
    if reported < config.clients {
        return Err(LoadError::ClientsLost(config.clients - reported));
    }
    let mut report = LoadReport::new(config, &total, elapsed);
    report.transactions = client.txn_counts().since(&txn_before);
    Ok(report)
}

/// One sequential client: commands one at a time until the plan says stop.
async fn client_loop<R: Runtime>(
    rt: R,
    session: Session<R>,
    index: u64,
    mut rng: SmallRng,
    plan: Arc<Plan>,
    history: Option<mpsc::Sender<HistoryRecord>>,
) -> Stats {
    let mut client = LoadClient {
        rt,
        session,
        index,
        plan: plan.clone(),
        history,
        stats: Stats::default(),
    };
    if let Some(bank) = &plan.bank {
        while bank_turn(&mut client, bank, &mut rng).await.is_some() {}
        return client.stats;
    }
    while let Some(measured) = plan.next_turn(client.rt.now()) {
        let ops = plan.gen.next_command(&mut rng);
        // Counted and recorded; nothing depends on the outcome.
        let _ = client.execute(ops, measured).await;
    }
    client.stats
}

/// A sequential client's session, and where its commands are counted and
/// recorded.
struct LoadClient<R: Runtime> {
    rt: R,
    session: Session<R>,
    index: u64,
    plan: Arc<Plan>,
    history: Option<mpsc::Sender<HistoryRecord>>,
    stats: Stats,
}

impl<R: Runtime> LoadClient<R> {
    /// Runs one command, counts it (in the stats if `measured`) and records
    /// it in the history.
    async fn execute(
        &mut self,
        ops: Vec<Op>,
        measured: bool,
    ) -> Result<Vec<OpResult>, ClientError> {
        let plan = &self.plan;
        let history_ops: Option<Vec<HistoryOp>> = self
            .history
            .as_ref()
            .map(|_| ops.iter().map(HistoryOp::from_op).collect());
        let invoke = self.rt.now();
        let outcome = self.session.execute(ops).await;
        let complete = self.rt.now();
        let status = Status::of(&outcome);
        plan.count(status);
        if measured {
            self.stats
                .record(status, complete.saturating_duration_since(invoke));
        }
        if let (Some(tx), Some(ops)) = (self.history.as_ref(), history_ops) {
            let record = HistoryRecord::new(
                self.index,
                plan.nanos(invoke),
                plan.nanos(complete),
                ops,
                &outcome,
            );
            if tx.send(record).await.is_err() {
                // The writer failed; it has set `abort` and will report why.
                self.history = None;
            }
        }
        outcome
    }

    /// [`LoadClient::execute`] if the plan allows another command; `None`
    /// when the run is over.
    async fn next(&mut self, ops: Vec<Op>) -> Option<Result<Vec<OpResult>, ClientError>> {
        let measured = self.plan.next_turn(self.rt.now())?;
        Some(self.execute(ops, measured).await)
    }
}

/// One turn of the bank workload (see [`Bank`]): a read of every balance,
/// or a transfer (retried after a failed CHECK). Every command counts
/// against the plan like any other; `None` when the run is over. The bank
/// counters include the warm-up, so no violation goes unreported.
async fn bank_turn<R: Runtime>(
    client: &mut LoadClient<R>,
    bank: &Bank,
    rng: &mut SmallRng,
) -> Option<()> {
    let (from, to) = match bank.next_turn(rng) {
        BankTurn::ReadAll => {
            if let Ok(results) = client.next(bank.read_all()).await? {
                client.stats.bank.reads += 1;
                match bank.sum(&results) {
                    Ok(sum) if sum == bank.total() => {}
                    Ok(sum) => {
                        client.stats.bank.violations += 1;
                        tracing::warn!("bank: the balances sum to {sum}, not {}", bank.total());
                    }
                    Err(e) => {
                        client.stats.bank.violations += 1;
                        tracing::warn!("bank: {e}");
                    }
                }
            }
            return Some(());
        }
        BankTurn::Transfer { from, to } => (from, to),
    };
    for _ in 0..BANK_TRANSFER_ATTEMPTS_MAX {
        let Ok(read) = client.next(bank.read_pair(from, to)).await? else {
            return Some(());
        };
        let ops = match bank.transfer(rng, from, to, &read) {
            Ok(ops) => ops,
            Err(e) => {
                client.stats.bank.violations += 1;
                tracing::warn!("bank: {e}");
                return Some(());
            }
        };
        match client.next(ops).await? {
            Ok(_) => {
                client.stats.bank.transfers += 1;
                return Some(());
            }
            // Another client moved money from or to one of the accounts
            // since they were read: read them again and retry.
            Err(ClientError::CheckFailed { .. }) => client.stats.bank.transfers_aborted += 1,
            Err(_) => return Some(()),
        }
    }
    Some(())
}

/// Merges the clients' stats as they finish, printing progress meanwhile.
/// Returns the total and how many clients reported.
async fn collect<R: Runtime>(
    rt: &R,
    plan: &Plan,
    mut results: mpsc::Receiver<Stats>,
    progress: Option<Duration>,
) -> (Stats, usize) {
    let mut total = Stats::default();
    let mut reported = 0;
    let mut meter = ProgressMeter::new(plan.start);
    let mut next_tick = progress.and_then(|p| plan.start.checked_add(p));
    loop {
        let wait = next_tick.map(|t| t.saturating_duration_since(rt.now()));
        tokio::select! {
            biased;
            stats = results.recv() => match stats {
                Some(stats) => {
                    total.merge(&stats);
                    reported += 1;
                }
                None => return (total, reported),
            },
            () = sleep_or_forever(rt, wait) => {
                let now = rt.now();
                eprintln!("{}", meter.line(now, plan));
                next_tick = next_tick.zip(progress).map(|(t, p)| next_after(t, p, now));
            }
        }
    }
}

/// The first `t + k * period` (k >= 1) after `now`.
fn next_after(t: Instant, period: Duration, now: Instant) -> Instant {
    let mut next = t + period;
    while next <= now {
        next += period;
    }
    next
}

async fn sleep_or_forever<R: Runtime>(rt: &R, wait: Option<Duration>) {
    match wait {
        Some(d) => rt.sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Formats progress lines: totals so far and the rate since the last line.
struct ProgressMeter {
    last_at: Instant,
    last_finished: u64,
}

impl ProgressMeter {
    fn new(start: Instant) -> ProgressMeter {
        ProgressMeter {
            last_at: start,
            last_finished: 0,
        }
    }

    fn line(&mut self, now: Instant, plan: &Plan) -> String {
        let finished = plan.finished.load(Ordering::Relaxed);
        let errors = plan.errors.load(Ordering::Relaxed);
        let interval = now.saturating_duration_since(self.last_at).as_secs_f64();
        let rate = if interval > 0.0 {
            (finished - self.last_finished) as f64 / interval
        } else {
            0.0
        };
        self.last_at = now;
        self.last_finished = finished;
        let elapsed = now.saturating_duration_since(plan.start).as_secs_f64();
        let phase = if now < plan.measure_from {
            " (warm-up)"
        } else {
            ""
        };
        format!("[{elapsed:7.1}s] {finished} ops, {rate:.0} ops/s, {errors} errors{phase}")
    }
}

/// Writes history records as JSON lines until every client is done, then
/// flushes. On a write error it stops the run and reports the error.
async fn write_history(
    mut records: mpsc::Receiver<HistoryRecord>,
    mut out: Box<dyn Write + Send>,
    plan: Arc<Plan>,
    done: oneshot::Sender<io::Result<u64>>,
) {
    let result = drain_history(&mut records, &mut out).await;
    if result.is_err() {
        plan.abort.store(true, Ordering::Relaxed);
    }
    drop(records); // wakes clients waiting to send
    let _ = done.send(result);
}

async fn drain_history(
    records: &mut mpsc::Receiver<HistoryRecord>,
    out: &mut Box<dyn Write + Send>,
) -> io::Result<u64> {
    let mut batch = Vec::with_capacity(HISTORY_BATCH);
    let mut written = 0;
    while records.recv_many(&mut batch, HISTORY_BATCH).await > 0 {
        for record in batch.drain(..) {
            record.write_line(out.as_mut())?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Distribution, Workload};

    fn config(ops_limit: Option<u64>, warmup_s: u64) -> LoadConfig {
        LoadConfig {
            workload: Workload::A,
            distribution: Distribution::Uniform,
            clients: 1,
            table: "t".into(),
            keys: 10,
            value_size: 1,
            duration_s: Some(10),
            ops_limit,
            warmup_s,
            seed: 0,
            progress_ms: 0,
            key_stride: 1,
        }
    }

    #[test]
    fn the_ops_budget_and_the_deadline_end_the_run() {
        let start = Instant::now();
        let plan = Plan::new(start, &config(Some(2), 0));
        assert_eq!(plan.next_turn(start), Some(true));
        assert_eq!(plan.next_turn(start), Some(true));
        assert_eq!(plan.next_turn(start), None);
        assert_eq!(plan.next_turn(start + Duration::from_secs(10)), None);
    }

    #[test]
    fn warm_up_commands_are_not_measured_nor_budgeted() {
        let start = Instant::now();
        let plan = Plan::new(start, &config(Some(1), 5));
        assert_eq!(plan.next_turn(start), Some(false));
        assert_eq!(plan.next_turn(start), Some(false));
        let later = start + Duration::from_secs(5);
        assert_eq!(plan.next_turn(later), Some(true));
        assert_eq!(plan.next_turn(later), None);
        // The deadline counts from the end of the warm-up.
        let plan = Plan::new(start, &config(None, 5));
        assert_eq!(plan.next_turn(start + Duration::from_secs(14)), Some(true));
        assert_eq!(plan.next_turn(start + Duration::from_secs(15)), None);
    }

    #[test]
    fn an_abort_stops_every_client() {
        let start = Instant::now();
        let plan = Plan::new(start, &config(None, 0));
        plan.abort.store(true, Ordering::Relaxed);
        assert_eq!(plan.next_turn(start), None);
    }

    #[test]
    fn ticks_skip_missed_periods() {
        let t = Instant::now();
        let p = Duration::from_secs(1);
        assert_eq!(next_after(t, p, t), t + p);
        assert_eq!(next_after(t, p, t + Duration::from_millis(2500)), t + 3 * p);
    }
}
