//! `sim`: runs the whole-cluster simulation ([`distkv::simulation`]) for many
//! seeds in parallel and reports every failing seed with a command that
//! replays it.
//!
//! ```text
//! cargo run --release --features sim --bin sim -- --seed 1 --seeds 1000
//! cargo run --release --features sim --bin sim -- --seed 42 --mode durable --verbose
//! cargo run --release --features sim --bin sim -- --seeds 500 --inject-bug duplicate-apply
//! ```
//!
//! Swarm testing: each seed enables a random subset of the fault kinds of
//! `--faults` (`--no-swarm`: all of them), and every `FAIL` / `PASS` line
//! names that subset (`faults=`).
//!
//! Each run (one seed in one mode) gets a child process of its own (this
//! binary with a hidden `--child` flag) and in it a fresh madsim runtime
//! seeded with the seed, so a run depends on nothing but its seed, mode,
//! fault menu and injected bug: the same arguments replay it exactly, and
//! `--check-determinism` compares two separate processes. (`--in-process`
//! runs the seeds on threads of one process instead; see [`run_child`] for
//! the process-wide state that can then leak between runs.) Output: one `FAIL` line plus a reproduce command per
//! failing run (`--verbose`: also one `PASS` line with the trace hash per
//! passing run), in seed order; then `<N> passed, <M> failed`, and the
//! simulated-time throughput. Exit status 1 if any run failed (with
//! `--inject-bug`, failing is the point: the runner names the first seed that
//! caught the bug), 2 on bad arguments.

use clap::{Parser, ValueEnum};
use distkv::bugs::{self, Bug};
use distkv::simulation::harness::{self, Config, Faults, Linearizability, Mode, Shape, Summary};
use distkv::stats::{Counts, Event};
use madsim::runtime::Runtime;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Runs the seeded whole-cluster simulation (manager, 3–5 servers with
/// Raft-replicated partitions, four clients; a per-key model and a
/// linearizability checker) for a range of seeds.
#[derive(Parser, Debug)]
#[command(name = "sim", version)]
struct Args {
    /// First seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of seeds: runs SEED, SEED+1, ..., SEED+SEEDS-1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Runs in parallel, each in its own child process [default: the number
    /// of available cores].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: Option<u64>,
    /// Server storage: in memory, durable (write-ahead log on a disk that
    /// loses unsynced bytes at a kill), or both (two runs per seed).
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    mode: ModeArg,
    /// Inject a bug (see `distkv::bugs`) into every run: some seed is then
    /// expected to fail, and the runner reports the first that did. One of
    /// ack-before-fsync and forget-vote (durable mode only: in memory nothing
    /// is fsynced or recovered), duplicate-apply, commit-without-quorum,
    /// stale-read, slow-heartbeat (caught by the stability check),
    /// forget-installed-snapshot, no-amnesia-guard.
    #[arg(long, value_name = "NAME", value_parser = parse_bug)]
    inject_bug: Option<Bug>,
    /// Faults to inject: a comma-separated list of kill (server kills and
    /// restarts; durable: power cuts, also of several or all servers),
    /// partition (server-to-server partitions: a server cut off both ways or
    /// one way, or a bridge: one peer link cut, or with 4-5 servers two
    /// sides that only a middle server connects), pause (a server frozen for a while),
    /// clog (clogged client/server links), manager (manager kill and
    /// restart), loss (datagram loss), dup (datagram duplication), latency
    /// (random latency, which reorders; without it every datagram takes
    /// 1 ms), disk (durable only: a server's disk fails writes or fsyncs for
    /// a while; the server must stop, and is restarted as after a power
    /// cut), rolling (every server restarted in turn), wipe (durable only:
    /// a server restarted with an empty disk), coordinator (transaction
    /// coordinators crash mid-protocol; late duplicate prepares), transfer
    /// (an operator moving leaderships), lose (a server lost for good, with
    /// a short --dead-after: re-replication), split (range splits by an
    /// operator and, in half the seeds, by the manager past a small key
    /// count), join (a new server joins mid-run with --join), drain (an
    /// operator drains a server); or all, or none.
    /// Swarm testing: each seed enables a random subset of these (see
    /// --no-swarm); the runner's lines name the subset of each run.
    #[arg(long, value_name = "LIST", default_value = "all", value_parser = Faults::parse)]
    faults: Faults,
    /// Inject every kind of --faults in every run, instead of the random
    /// subset each seed enables (swarm testing).
    #[arg(long)]
    no_swarm: bool,
    /// Run every seed twice and require identical outcomes (trace hash,
    /// counts, end time; or the same failure).
    #[arg(long)]
    check_determinism: bool,
    /// Also print one line per passing run, with its trace hash, and the
    /// whole message and location of each failure.
    #[arg(long, short)]
    verbose: bool,
    /// Stop at the first failing run, in seed order (runs after it are not
    /// started, or not reported): with --inject-bug, finds the first
    /// catching seed without running the rest.
    #[arg(long)]
    stop_on_failure: bool,
    /// Run the seeds on threads of this process instead of one child
    /// process per run. Faster to start, but state that leaks between runs
    /// in one process (tokio's process-wide RNG seeds, see `run_child`) can
    /// make a run differ from its replay, which `--check-determinism` then
    /// reports.
    #[arg(long)]
    in_process: bool,
    /// Count a run whose final linearizability search ran out of budget as
    /// passed (by default it fails: an unchecked history proves nothing).
    #[arg(long)]
    allow_give_up: bool,
    /// Instead of the fault scenario: the scale scenario (`distkv::simulation::scale`)
    /// for --seed, with SERVERS,TABLES,JOINS[,SPLITS][,lose] (e.g. 30,100,3,10,lose: 3,000
    /// partitions on 30 servers, 3 joining at 10 s, 10 partitions written to and split from
    /// 12 s, server 0 lost at 20 s); prints when the placement converged and checks that every
    /// written key reads back.
    #[arg(long, value_name = "SHAPE")]
    scale: Option<String>,
    /// With --scale: how long (simulated seconds) to wait for convergence.
    #[arg(long, default_value_t = 600)]
    scale_bound_s: u64,
    /// Internal: run exactly one seed in one mode and print its outcome as
    /// one JSON line (what the parent runner starts per run).
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Memory,
    Durable,
    Both,
}

impl ModeArg {
    fn modes(self) -> &'static [Mode] {
        match self {
            ModeArg::Memory => &[Mode::Memory],
            ModeArg::Durable => &[Mode::Durable],
            ModeArg::Both => &[Mode::Memory, Mode::Durable],
        }
    }
}

fn parse_bug(name: &str) -> Result<Bug, String> {
    Bug::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
        format!(
            "unknown bug `{name}` (expected one of {})",
            names.join(", ")
        )
    })
}

/// The modes in which `bug` changes anything. Exhaustive on purpose: a new
/// bug must be classified here.
fn bug_modes(bug: Bug) -> &'static [Mode] {
    match bug {
        // In memory mode nothing is fsynced, and nothing is recovered.
        Bug::AckBeforeFsync | Bug::ForgetVote => &[Mode::Durable],
        Bug::DuplicateApply
        | Bug::CommitWithoutQuorum
        | Bug::StaleRead
        | Bug::SlowHeartbeat
        | Bug::ForgetInstalledSnapshot
        | Bug::NoAmnesiaGuard
        | Bug::TxnCommitWithoutAllPrepares
        | Bug::TxnNoLocks
        | Bug::TxnRecoverWithMissingPrepare
        | Bug::TxnReadIgnoresLocks
        // In the Raft core; they matter only where membership changes (the
        // manager's re-replication), and were hunted in sim/raft.
        | Bug::ConfChangeUnsafe
        | Bug::RemovedMemberVotes
        | Bug::AddVoterBeforeCatchUp
        | Bug::SplitMissesLastWrites => &[Mode::Memory, Mode::Durable],
        // Injected in the Raft-group simulation's driver (sim/raft) only.
        Bug::SnapshotOffByOne => &[],
    }
}

/// Names of the threads that run one seed; the panic hook keeps quiet on them.
const SEED_THREAD: &str = "sim-seed-";

thread_local! {
    /// The first panic on this seed thread: location and simulated time.
    static FIRST_PANIC: RefCell<Option<(String, Option<Duration>)>> = const { RefCell::new(None) };
}

/// Replaces the default panic hook: panics on seed threads are expected
/// (that is how the checker reports) and are printed by the runner as one
/// line, so the hook only records where and when they happened. Any other
/// thread's panic is a runner bug and goes to the default hook.
fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let on_seed_thread = thread::current()
            .name()
            .is_some_and(|n| n.starts_with(SEED_THREAD));
        if !on_seed_thread {
            return default(info);
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown location".into());
        // Still inside the simulation: this is the simulated time of the panic.
        let at = madsim::time::TimeHandle::try_current().map(|t| t.elapsed());
        FIRST_PANIC.with(|p| {
            p.borrow_mut().get_or_insert((location, at));
        });
    }));
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Failure {
    /// The panic message.
    message: String,
    location: String,
}

impl Failure {
    fn check(&self) -> &'static str {
        harness::failed_check(&self.message)
    }

    /// The message's first line, without the `seed <S>: ` prefix most
    /// messages start with (the report line names the seed).
    fn first_line(&self) -> &str {
        let line = self.message.lines().next().unwrap_or("");
        match line
            .strip_prefix("seed ")
            .and_then(|rest| rest.split_once(": "))
        {
            Some((seed, rest)) if seed.bytes().all(|b| b.is_ascii_digit()) => rest,
            _ => line,
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// What a passing run reports: what must be equal for equal runs, and the
/// details of its `PASS` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Passed {
    trace_hash: u64,
    end_ns: u64,
    /// The final linearizability search ran out of budget (states explored).
    gave_up: Option<u64>,
    /// Elections, compactions, snapshots, checkpoints, wipes in the run.
    events: Counts,
    /// `(N commands: ...; simulated ...)`, from the run's [`Summary`].
    details: String,
}

impl Passed {
    fn of(s: &Summary) -> Passed {
        let c = &s.counts;
        Passed {
            trace_hash: s.trace_hash,
            end_ns: s.end.as_nanos() as u64,
            gave_up: match s.linearizability {
                Linearizability::GaveUp { states } => Some(states),
                Linearizability::Checked { .. } => None,
            },
            events: s.events,
            details: format!(
                "({} commands: {} ok, {} unknown, {} unavailable; {} kills ({} skipped), \
                 {} clogs, {} partitions, {} pauses, {} rolling restarts, {} disk faults \
                 ({} fail-stops), loss {}, \
                 dup {}, latency 1..{} ms; {}; compaction every {} entries: {}; \
                 simulated {:.1?})",
                c.commands,
                c.ok,
                c.unknown,
                c.unavailable,
                s.kills,
                s.kills_skipped,
                s.clogs,
                s.partitions,
                s.pauses,
                s.rolling,
                s.disk_faults,
                s.fail_stops,
                s.loss,
                s.dup,
                s.max_latency_ms,
                s.linearizability,
                s.compact_entries,
                s.events,
                s.end
            ),
        }
    }
}

/// One run's outcome and how much simulated time it covered (the line a
/// child process prints).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Run {
    result: Result<Passed, Failure>,
    simulated_ns: u64,
}

/// Runs the scenario once for `seed` on a fresh OS thread, with `bug` (if
/// any) enabled on that thread only.
fn run_in_thread(seed: u64, config: Config, bug: Option<Bug>) -> Run {
    let thread = thread::Builder::new()
        .name(format!("{SEED_THREAD}{seed}"))
        .spawn(move || {
            if let Some(bug) = bug {
                bugs::enable(bug);
            }
            let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                rt.block_on(harness::scenario_with(config))
            }));
            // Dropping a runtime whose simulation panicked drops its tasks
            // mid-flight; keep the first failure if that panics too.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(rt)));
            let first = FIRST_PANIC.with(|p| p.borrow_mut().take());
            match result {
                Ok(summary) => Run {
                    simulated_ns: summary.end.as_nanos() as u64,
                    result: Ok(Passed::of(&summary)),
                },
                Err(payload) => {
                    let (location, at) = first.unwrap_or(("unknown location".into(), None));
                    Run {
                        result: Err(Failure {
                            message: panic_message(payload.as_ref()),
                            location,
                        }),
                        simulated_ns: at.unwrap_or_default().as_nanos() as u64,
                    }
                }
            }
        })
        .expect("cannot spawn a seed thread");
    // Backstop: the thread catches the simulation's panics itself.
    thread.join().unwrap_or_else(|payload| Run {
        result: Err(Failure {
            message: panic_message(payload.as_ref()),
            location: "sim runner seed thread".into(),
        }),
        simulated_ns: 0,
    })
}

/// Runs the scenario once in a child process (`sim --child ...`): a run then
/// depends on nothing but its arguments, as its reproduce command does.
/// Within one process, state outside the simulation leaks from run to run:
/// tokio seeds the thread-local RNG that `tokio::sync::watch` uses to pick a
/// notification shard from a process-wide counter, so two tasks waiting on
/// one watch channel (as the durable storage's flusher watchers do) can
/// wake in a different order in the second run of a seed than in the first.
fn run_child(seed: u64, config: Config, bug: Option<Bug>) -> Run {
    let failed = |message: String| Run {
        result: Err(Failure {
            message,
            location: "sim runner child process".into(),
        }),
        simulated_ns: 0,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(format!("cannot find the sim executable: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--child")
        .args(["--seed", &seed.to_string()])
        .args(["--mode", config.mode.name()])
        .args(["--faults", &config.faults.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(bug) = bug {
        cmd.args(["--inject-bug", bug.name()]);
    }
    if !config.swarm {
        cmd.arg("--no-swarm");
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => return failed(format!("cannot start a child process: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Run>(l).ok())
    {
        Some(run) => run,
        None => failed(format!(
            "the child process for seed {seed} ended with {} without a result; its output: {}",
            output.status,
            stdout.trim()
        )),
    }
}

/// `sim --child`: one run, its outcome as one JSON line on stdout.
fn child_main(args: &Args) -> ExitCode {
    let [mode] = args.mode.modes() else {
        eprintln!("error: --child needs --mode memory or --mode durable");
        return ExitCode::from(2);
    };
    install_panic_hook();
    let filter = stderr_filter::install();
    // `RUST_LOG=distkv=debug sim --seed S --mode M`: the servers' logs, on
    // stderr, with simulated time.
    if std::env::var_os("RUST_LOG").is_some() {
        distkv::cli::init_logging("info");
    }
    let config = Config {
        mode: *mode,
        faults: args.faults,
        swarm: !args.no_swarm,
        print: false,
    };
    let run = run_in_thread(args.seed, config, args.inject_bug);
    if let Some(filter) = filter {
        filter.remove();
    }
    println!(
        "{}",
        serde_json::to_string(&run).expect("a run's outcome encodes")
    );
    ExitCode::SUCCESS
}

fn run_once(seed: u64, config: Config, args: &Args) -> Run {
    if args.in_process {
        run_in_thread(seed, config, args.inject_bug)
    } else {
        run_child(seed, config, args.inject_bug)
    }
}

fn describe(result: &Result<Passed, Failure>) -> String {
    match result {
        Ok(p) => format!(
            "passed with trace {:016x}, ended at {:?}",
            p.trace_hash,
            Duration::from_nanos(p.end_ns)
        ),
        Err(f) => format!("failed ({}): {}", f.check(), f.first_line()),
    }
}

/// One seed in one mode, run once or (checking determinism) twice.
struct Report {
    seed: u64,
    mode: Mode,
    /// The fault kinds the run injected (its swarm subset of --faults).
    faults: Faults,
    /// The seed's cluster.
    shape: Shape,
    result: Result<Passed, Failure>,
    /// With `--check-determinism`: both runs' outcomes when they differ.
    nondeterministic: Option<(String, String)>,
    simulated: Duration,
    allow_give_up: bool,
}

impl Report {
    fn passed(&self) -> bool {
        self.result.is_ok() && self.nondeterministic.is_none() && self.gave_up().is_none()
    }

    /// States explored by a final linearizability search that ran out of
    /// budget, unless `--allow-give-up` accepts that.
    fn gave_up(&self) -> Option<u64> {
        match &self.result {
            Ok(p) if !self.allow_give_up => p.gave_up,
            _ => None,
        }
    }

    fn check(&self) -> String {
        match (&self.nondeterministic, &self.result) {
            (Some((a, b)), _) => {
                format!("determinism: first run {a}; second run {b}")
            }
            (None, Err(f)) => format!("{}: {}", f.check(), f.first_line()),
            (None, Ok(_)) => match self.gave_up() {
                Some(states) => format!(
                    "linearizability-gave-up: the final check ran out of budget after \
                     {states} states (--allow-give-up to accept)"
                ),
                None => String::new(),
            },
        }
    }
}

fn run_report(seed: u64, config: Config, args: &Args) -> Report {
    let first = run_once(seed, config, args);
    let mut simulated = Duration::from_nanos(first.simulated_ns);
    let mut nondeterministic = None;
    if args.check_determinism {
        let second = run_once(seed, config, args);
        simulated += Duration::from_nanos(second.simulated_ns);
        if second.result != first.result {
            nondeterministic = Some((describe(&first.result), describe(&second.result)));
        }
    }
    Report {
        seed,
        mode: config.mode,
        faults: config.enabled(seed),
        shape: Shape::for_seed(seed),
        result: first.result,
        nondeterministic,
        simulated,
        allow_give_up: args.allow_give_up,
    }
}

fn reproduce(args: &Args, report: &Report) -> String {
    let mut cmd = format!(
        "cargo run --release --features sim --bin sim -- --seed {} --mode {}",
        report.seed,
        report.mode.name()
    );
    if args.faults != Faults::all() {
        cmd += &format!(" --faults {}", args.faults);
    }
    if args.no_swarm {
        cmd += " --no-swarm";
    }
    if let Some(bug) = args.inject_bug {
        cmd += &format!(" --inject-bug {}", bug.name());
    }
    if report.nondeterministic.is_some() {
        cmd += " --check-determinism";
        if args.in_process {
            cmd += " --in-process";
        }
    }
    cmd
}

fn print_report(args: &Args, report: &Report) {
    if report.passed() {
        if args.verbose {
            let p = report.result.as_ref().expect("passed");
            println!(
                "PASS seed={} mode={} faults={} cluster=\"{}\" trace={:016x} {}",
                report.seed,
                report.mode.name(),
                report.faults,
                report.shape,
                p.trace_hash,
                p.details
            );
        }
        return;
    }
    println!(
        "FAIL seed={} mode={} faults={} cluster=\"{}\" check={}",
        report.seed,
        report.mode.name(),
        report.faults,
        report.shape,
        report.check()
    );
    if args.verbose {
        if let Err(f) = &report.result {
            println!("  at {}, simulated {:.3?}", f.location, report.simulated);
            if f.message.lines().nth(1).is_some() {
                for line in f.message.lines() {
                    println!("  | {line}");
                }
            }
        }
    }
    println!("  reproduce: {}", reproduce(args, report));
}

/// `sim --scale SERVERS,TABLES,JOINS[,SPLITS][,lose]`: one run of the scale
/// scenario.
fn scale_main(args: &Args, shape: &str) -> ExitCode {
    use distkv::simulation::scale::{scale_scenario, ScaleConfig};
    let usage = "error: --scale wants SERVERS,TABLES,JOINS[,SPLITS][,lose], e.g. 30,100,3,10,lose";
    let mut parts = shape.split(',');
    let mut num = || parts.next().and_then(|s| s.parse::<usize>().ok());
    let (Some(servers), Some(tables), Some(joins)) = (num(), num(), num()) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let rest: Vec<&str> = shape.split(',').skip(3).collect();
    let (splits, lose) = match rest.as_slice() {
        [] => (0, false),
        ["lose"] => (0, true),
        [n] | [n, "lose"] => match n.parse::<usize>() {
            Ok(splits) => (splits, rest.len() == 2),
            Err(_) => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    if servers < 3 || servers + joins > 40_000 || tables == 0 {
        eprintln!("error: --scale needs at least 3 servers and one table");
        return ExitCode::from(2);
    }
    let config = ScaleConfig {
        servers,
        tables,
        joins,
        splits,
        lose,
        bound: Duration::from_secs(args.scale_bound_s),
    };
    println!("sim --scale: seed {}, {config:?}", args.seed);
    let wall = Instant::now();
    let rt = Runtime::with_seed_and_config(args.seed, madsim::Config::default());
    let report = rt.block_on(scale_scenario(config));
    println!("{report:?}");
    println!("wall time {:.1?}", wall.elapsed());
    match report.converged_at {
        Some(_) if report.keys_lost > 0 => {
            println!("converged, but {} written keys were lost", report.keys_lost);
            ExitCode::FAILURE
        }
        Some(_) if report.splits < splits => {
            println!(
                "converged, but only {} of {splits} splits applied",
                report.splits
            );
            ExitCode::FAILURE
        }
        Some(at) => {
            println!("converged at {at:.1?} (simulated)");
            ExitCode::SUCCESS
        }
        None => {
            println!("did not converge within {} s", args.scale_bound_s);
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    if args.child {
        return child_main(&args);
    }
    if let Some(shape) = &args.scale {
        return scale_main(&args, shape);
    }
    let Some(end) = args.seed.checked_add(args.seeds) else {
        eprintln!("error: --seed + --seeds overflows u64");
        return ExitCode::from(2);
    };
    let modes = args.mode.modes();
    let total = usize::try_from(args.seeds)
        .ok()
        .and_then(|n| n.checked_mul(modes.len()))
        .expect("too many seeds");
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args
        .jobs
        .map_or(cores, |j| usize::try_from(j).unwrap_or(usize::MAX))
        .min(total);
    if let Some(bug) = args.inject_bug {
        if bug_modes(bug).is_empty() {
            println!(
                "note: {} is injected only in the Raft-group simulation (sim/raft)",
                bug.name()
            );
        } else if !modes.iter().any(|m| bug_modes(bug).contains(m)) {
            println!(
                "note: {} only matters with durable servers (--mode durable)",
                bug.name()
            );
        }
    }
    println!(
        "sim: seeds {} to {} ({} run(s): {} seed(s) x {}), {} job(s), faults {}{}{}",
        args.seed,
        end - 1,
        total,
        args.seeds,
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join("+"),
        jobs,
        args.faults,
        args.inject_bug
            .map(|b| format!(", injected bug {}", b.name()))
            .unwrap_or_default(),
        if args.check_determinism {
            ", each run twice (determinism check)"
        } else {
            ""
        }
    );

    install_panic_hook();
    let stderr_filter = stderr_filter::install();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    // With --stop-on-failure: the index of the first failing run seen so far.
    let stop_at = Arc::new(AtomicUsize::new(usize::MAX));
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (args, next, tx) = (args.clone(), next.clone(), tx.clone());
            let stop_at = stop_at.clone();
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || i > stop_at.load(Ordering::Relaxed) {
                    break;
                }
                let seed = args.seed + (i / modes.len()) as u64;
                let config = Config {
                    mode: modes[i % modes.len()],
                    faults: args.faults,
                    swarm: !args.no_swarm,
                    print: false,
                };
                let report = run_report(seed, config, &args);
                if args.stop_on_failure && !report.passed() {
                    stop_at.fetch_min(i, Ordering::Relaxed);
                }
                if tx.send((i, report)).is_err() {
                    break;
                }
            })
        })
        .collect();
    drop(tx);

    // Print in seed order as results arrive.
    let (mut passed, mut failed, mut gave_up) = (0u64, 0u64, 0u64);
    let (mut completed, mut installing) = (0u64, 0u64);
    let mut events = Counts::default();
    let mut simulated = Duration::ZERO;
    let mut first_failure: Option<(u64, Mode, Faults, String)> = None;
    let mut pending: BTreeMap<usize, Report> = BTreeMap::new();
    let mut next_to_print = 0;
    'results: for (i, report) in rx {
        pending.insert(i, report);
        while let Some(report) = pending.remove(&next_to_print) {
            if args.stop_on_failure && first_failure.is_some() {
                break 'results;
            }
            next_to_print += 1;
            simulated += report.simulated;
            if let Ok(p) = &report.result {
                events.add(&p.events);
                completed += 1;
                installing += u64::from(p.events.get(Event::SnapshotInstalled) > 0);
                gave_up += u64::from(p.gave_up.is_some());
            }
            if report.passed() {
                passed += 1;
            } else {
                failed += 1;
                first_failure.get_or_insert((
                    report.seed,
                    report.mode,
                    report.faults,
                    report.check(),
                ));
            }
            print_report(&args, &report);
        }
    }
    let wall = started.elapsed();
    if let Some(filter) = stderr_filter {
        filter.remove();
    }
    for worker in workers {
        worker.join().expect("sim worker thread panicked");
    }

    // Runs reported (all of them, unless --stop-on-failure stopped early).
    let runs = passed + failed;
    if let Some(bug) = args.inject_bug {
        match &first_failure {
            Some((seed, mode, faults, check)) => println!(
                "injected bug {} first caught by seed {seed} mode={} faults={faults} \
                 check={check} ({failed} of {runs} runs failed)",
                bug.name(),
                mode.name()
            ),
            None => println!("injected bug {} was NOT caught in {runs} runs", bug.name()),
        }
    }
    // Failed runs report no counts: the totals cover the completed runs.
    println!(
        "exercised in {completed} completed run(s): {events}; snapshots installed in \
         {installing} of them, elections per run {:.1}",
        events.get(Event::Election) as f64 / completed.max(1) as f64,
    );
    if gave_up > 0 {
        println!(
            "{gave_up} run(s) gave up the final linearizability check{}",
            if args.allow_give_up {
                " (accepted: --allow-give-up)"
            } else {
                " (counted as failed)"
            }
        );
    }
    println!("{passed} passed, {failed} failed");
    let secs = wall.as_secs_f64().max(1e-9);
    let executions = runs as f64 * if args.check_determinism { 2.0 } else { 1.0 };
    println!(
        "simulated {:.0} s in {:.2} s wall with {jobs} job(s): {:.0} simulated s per real s, \
         {:.1} seeds/s, {:.1} scenario runs/s",
        simulated.as_secs_f64(),
        wall.as_secs_f64(),
        simulated.as_secs_f64() / secs,
        runs as f64 / modes.len() as f64 / secs,
        executions / secs,
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// madsim prints `context: node=.. task=.. (spawned at ..)` to stderr for every
/// task that panics, outside the panic hook: one line per failing run. While
/// the seeds run, fd 2 is a pipe whose reader drops those lines and passes
/// everything else on to the real stderr.
#[cfg(unix)]
mod stderr_filter {
    use std::fs::File;
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::thread::JoinHandle;

    const DROPPED: &[u8] = b"context: node=";

    pub struct Filter {
        /// The real stderr, to put back on fd 2.
        saved: OwnedFd,
        reader: JoinHandle<()>,
    }

    /// Redirects fd 2 through the filter; `None` (unfiltered) if any step
    /// fails.
    pub fn install() -> Option<Filter> {
        let mut fds = [0; 2];
        // SAFETY: plain fd syscalls; each fd they return is owned exactly once.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                return None;
            }
            let (read, write) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
            let saved = libc::dup(2);
            if saved < 0 {
                return None;
            }
            let saved = OwnedFd::from_raw_fd(saved);
            let mut out = File::from(saved.try_clone().ok()?);
            if libc::dup2(fds[1], 2) < 0 {
                return None;
            }
            // fd 2 is now the pipe's only writer.
            drop(write);
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(File::from(read)).split(b'\n') {
                    let Ok(mut line) = line else { break };
                    if !line.starts_with(DROPPED) {
                        line.push(b'\n');
                        let _ = out.write_all(&line);
                    }
                }
            });
            Some(Filter { saved, reader })
        }
    }

    impl Filter {
        /// Puts the real stderr back and waits until everything written
        /// before has been passed on.
        pub fn remove(self) {
            let _ = std::io::stderr().flush();
            // SAFETY: `saved` is open; dup2 closes the pipe's last writer.
            unsafe {
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&self.saved), 2);
            }
            let _ = self.reader.join();
        }
    }
}

#[cfg(not(unix))]
mod stderr_filter {
    pub struct Filter;

    pub fn install() -> Option<Filter> {
        None
    }

    impl Filter {
        pub fn remove(self) {}
    }
}
