//! Deterministic simulation of a distkv cluster on madsim
//! (`cargo test --features sim --test sim`).
//!
//! The scenario and its checker live in the library
//! ([`distkv::simulation`]): [`harness::scenario`] starts a manager, three
//! to five servers with Raft-replicated partitions and four clients on their
//! own simulated nodes, running the production code paths on `SimRuntime`;
//! injects (each seed a random subset of) packet loss, duplication and
//! latency, server kills and restarts (power cuts, also of every server at
//! once, in durable mode; a minority at a time in memory mode), rolling
//! restarts, server partitions, pauses, disk errors (the server must
//! fail-stop), manager restarts and clogged client links; checks
//! every command's outcome against the per-key
//! [`distkv::simulation::model::Model`]; heals everything and requires every
//! client to make progress; and finally checks the whole history with the
//! linearizability checker (`distkv::checker`). See each module's docs for
//! what exactly is checked. The `sim` binary
//! (`cargo run --release --features sim --bin sim -- --help`) runs the same
//! scenario for many seeds in parallel.
//!
//! Seeds: `#[madsim::test]` reads `MADSIM_TEST_SEED` (default: the current
//! time) and `MADSIM_TEST_NUM`, e.g.
//!
//! ```text
//! MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=200 cargo test --release --features sim --test sim chaos
//! MADSIM_TEST_SEED=<seed> cargo test --release --features sim --test sim chaos -- --exact --nocapture
//! ```
//! A failure panics with the seed and the offending key, command, the
//! possible states and what was observed; madsim also prints the seed.
//!
//! Besides the seeded scenarios (`chaos`: in-memory servers, `chaos_durable`:
//! servers with `--persistence` on a disk that loses unsynced bytes), the
//! binary checks that runs are deterministic, and that the checkers (the
//! per-key model and the final linearizability check) catch every bug
//! `distkv::bugs` can inject.
#![cfg(madsim)]

mod model_tests;

use distkv::bugs::Bug;
use distkv::simulation::harness::{self, FaultKind, Faults, Mode, Summary};
use madsim::runtime::Runtime;
use madsim::Config;

/// Runs the scenario for `seed` on a fresh OS thread (std's per-thread hash
/// seeds are only deterministic for the first runtime on a thread).
fn run_seed(mode: Mode, seed: u64) -> Summary {
    std::thread::spawn(move || {
        let rt = Runtime::with_seed_and_config(seed, Config::default());
        rt.block_on(harness::scenario(mode))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The chaos scenario with in-memory servers, for the seeds given by
/// `MADSIM_TEST_SEED` / `MADSIM_TEST_NUM`.
#[madsim::test]
async fn chaos() {
    harness::scenario(Mode::Memory).await;
}

/// The chaos scenario with durable servers (`--persistence`): kills are
/// power cuts on a disk that loses unsynced bytes.
#[madsim::test]
async fn chaos_durable() {
    harness::scenario(Mode::Durable).await;
}

/// The same seed gives the same run: identical outcomes at identical
/// simulated times (the trace hash covers every command and its outcome).
/// In one process, for in-memory servers; see [`same_seed_same_run_across_processes`]
/// for durable ones.
#[test]
fn same_seed_same_run() {
    let mode = Mode::Memory;
    let a = run_seed(mode, 7);
    let b = run_seed(mode, 7);
    assert_eq!(a, b, "{mode:?}: seed 7 ran differently twice");
    let c = run_seed(mode, 8);
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "{mode:?}: seeds 7 and 8 ran identically"
    );
}

/// The same seed gives the same run in two separate processes, in both
/// modes (the `sim` runner's `--check-determinism`, one child process per
/// run). Durable runs are not compared within one process: the storage
/// layer's `tokio::sync::watch` channel picks notification shards with
/// tokio's thread-local RNG, which tokio seeds from a process-wide counter,
/// so a second run of a seed in the same process can wake the log's waiters
/// in another order (see the runner's `run_child`).
#[test]
fn same_seed_same_run_across_processes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["--seed", "7", "--seeds", "2", "--check-determinism"])
        .output()
        .expect("the sim runner starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The disk and duplication faults do something: with only those two on
/// (no swarm), a durable run sends duplicate datagrams, and a server whose
/// disk fails stops (fail-stop, which the harness expects) and is
/// restarted; the run passes.
#[test]
fn disk_errors_fail_stop_a_server_and_duplicates_are_sent() {
    let summary = std::thread::spawn(|| {
        let rt = Runtime::with_seed_and_config(3, madsim::Config::default());
        rt.block_on(harness::scenario_with(harness::Config {
            mode: Mode::Durable,
            faults: Faults::none().with(FaultKind::Disk).with(FaultKind::Dup),
            swarm: false,
            print: false,
        }))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    println!("{summary}");
    assert!(summary.disk_faults > 0, "{summary}");
    assert!(summary.fail_stops > 0, "{summary}");
    let copies: u64 = summary
        .dup
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("dup reads `<rate>% (<n> copies)`");
    assert!(copies > 0, "{summary}");
}

/// madsim's own check: runs twice and compares every random draw (in one
/// process, so in-memory servers only; see above).
#[test]
fn madsim_determinism_check() {
    Runtime::check_determinism(3, Config::default(), harness::scenario_memory);
}

/// Regression (a harness bug, not a library one): under 2.6 % loss with a
/// 1.5 s command deadline, client 1's initial map fetch lost every attempt
/// and `Client::connect` rightly returned `Unavailable`; the harness treated
/// that as fatal. It now retries connecting, as a real client would.
#[test]
fn regression_seed_10941_connect_under_loss() {
    run_seed(Mode::Memory, 10941);
}

/// Regression (a harness bug, not a library one): a write whose outcome
/// was unknown to the client (its requests were queued at a leader frozen
/// by a pause) was proposed and committed when that leader resumed, 3 s
/// later and after a SCAN of the same client had shown it not applied. That
/// is allowed (an unknown outcome may take effect at any later time, until
/// the session's next acknowledged write in that partition fences it), but
/// the per-key model assumed unknown writes land before their completion.
/// It now keeps them pending until fenced. (The schedule has changed since,
/// so this seed no longer replays that exact run; the model unit test
/// `an_unknown_write_may_land_late_until_a_later_write_fences_it` pins the rule.)
#[test]
fn regression_seed_1195_unknown_write_lands_late() {
    run_seed(Mode::Memory, 1195);
}

/// Seed 141 (memory mode, once compaction ran every few entries): a node
/// that had installed a snapshot became leader but could not send one
/// ("follower needs a snapshot but none is available"), so a restarted,
/// empty follower never caught up; the next kill left one real copy and
/// a later GET read nothing. Fixed by keeping an installed snapshot to send
/// on (`raft::tests::a_node_that_installed_a_snapshot_can_send_it_as_leader`).
#[test]
fn regression_seed_141_installed_snapshot_sent_on() {
    run_seed(Mode::Memory, 141);
}

/// Runs seeds `1..=count` in `mode` with `bug` injected (see
/// `distkv::bugs`) through the `sim` runner, one child process per run as
/// its reproduce commands do, stopping at the first failure; returns that
/// seed and the check that failed, with the runner's line about it.
fn first_failing_seed(mode: Mode, bug: Bug, count: u64) -> Option<(u64, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["--seed", "1", "--seeds", &count.to_string()])
        .args(["--mode", mode.name(), "--inject-bug", bug.name()])
        .arg("--stop-on-failure")
        .output()
        .expect("the sim runner starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| {
        l.starts_with(&format!(
            "injected bug {} first caught by seed ",
            bug.name()
        ))
    })?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let seed = line
        .split("by seed ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((seed, field("check=")?, line.to_string()))
}

/// The checks that report a safety violation (see [`harness::failed_check`]).
const SAFETY: &[&str] = &[
    "model",
    "linearizability",
    "atomicity",
    "bank",
    "raft-safety",
];

/// Asserts that `bug` is caught in `mode` within seeds `1..=count` by one of
/// the `expected` checks (see [`harness::failed_check`]).
fn assert_caught(mode: Mode, bug: Bug, count: u64, expected: &[&str]) {
    let Some((seed, check, line)) = first_failing_seed(mode, bug, count) else {
        panic!("{mode:?}: {} went unnoticed in {count} seeds", bug.name());
    };
    println!("{mode:?}: {line}");
    assert!(
        expected.contains(&check.trim_end_matches(':')),
        "{mode:?}: {} seed {seed} failed check {check}, not one of {expected:?}",
        bug.name()
    );
}

/// The checker is not vacuous: a server that re-applies retried writes
/// (ignoring its session table) is caught, in both modes (nearly three
/// runs in four).
#[test]
fn catches_injected_duplicate_apply() {
    assert_caught(Mode::Memory, Bug::DuplicateApply, 20, &["model"]);
    assert_caught(Mode::Durable, Bug::DuplicateApply, 20, &["model"]);
}

/// Followers that acknowledge appends (and votes) before fsyncing them let
/// a leader commit an entry that a power cut of every server then loses
/// (the followers' slow disks had not synced it); the durable scenario must
/// notice. Rare (10 of 1000 runs once; first seed 15 then, 217 once the
/// bank workload and the coordinator faults joined, 171 since transaction
/// decisions are batched, 19 once the manager re-replicated and servers
/// could be lost for good, 269 since it balances replicas and leaders:
/// each change moved the draws; 26 since received snapshots are written
/// off the event loop; 186 since half the seeds run three managers; 199
/// since an operator moves replicas by hand), so pinned to its first
/// catching seed.
#[test]
fn catches_injected_ack_before_fsync() {
    assert_caught_by_seed(&["--mode", "durable"], Bug::AckBeforeFsync, 199, SAFETY);
}

/// A leader cut off from its peers that commits alone acknowledges writes
/// the new leader never had (more than a third of the runs).
#[test]
fn catches_injected_commit_without_quorum() {
    assert_caught(Mode::Durable, Bug::CommitWithoutQuorum, 20, SAFETY);
    assert_caught(Mode::Memory, Bug::CommitWithoutQuorum, 20, SAFETY);
}

/// A server that forgets its term and vote in a restart can vote twice in
/// one term, or follow a deposed leader: two histories get committed.
/// About 6-9 % of durable seeds catch it, most by a safety check, some by
/// liveness first (a transaction stuck on a lock of the diverged history),
/// so the test pins the first seed a safety check catches: durable seed 42
/// since an operator moves replicas by hand, 39 since half the seeds run
/// three managers (10 catches it first, by liveness), 7 since range splits and received snapshots written off the event loop (25
/// since the manager balances replicas and leaders, 14 with re-replication
/// alone, 1 before either moved the draws).
#[test]
fn catches_injected_forget_vote() {
    assert_caught_by_seed(&["--mode", "durable"], Bug::ForgetVote, 42, SAFETY);
}

/// A leader that serves reads from its own state without confirming its
/// leadership (ReadIndex) answers from a stale state after it was deposed
/// (frozen and cut off from its peers while a new leader took writes); a
/// client whose leader cache still points at it reads another client's key
/// there and the linearizability check catches it (about 3 % of
/// in-memory seeds, first: seed 44; 29 % of durable ones, where the per-key
/// model often sees it first).
#[test]
fn catches_injected_stale_read() {
    assert_caught(Mode::Memory, Bug::StaleRead, 150, SAFETY);
}

/// The quiet phase's stability check is not vacuous: leaders that heartbeat
/// only every two election timeouts keep losing idle groups to elections
/// (safe, so only the stability check can notice).
#[test]
fn catches_injected_slow_heartbeat() {
    assert_caught(Mode::Memory, Bug::SlowHeartbeat, 10, &["stability"]);
}

/// A node that installs a snapshot but does not keep it to send on cannot,
/// as leader, catch up a follower behind it; in memory mode a restarted
/// (empty) follower then never catches up, and after the next kill the
/// partition loses data or has no leader that can serve. Rare under the
/// swarm schedule (it needs compaction, an install, a leader change and a
/// restart in one group), so pinned with the faults that make it likely:
/// kills, rolling restarts and latency in every run (first seed 30 before
/// transactions joined the workload and moved the draws, then 36, 2 once
/// the manager planned membership changes, 28 since it also balances).
#[test]
fn catches_injected_forget_installed_snapshot() {
    assert_caught_by_seed(
        &[
            "--mode",
            "memory",
            "--no-swarm",
            "--faults",
            "kill,latency,rolling",
        ],
        Bug::ForgetInstalledSnapshot,
        28,
        &["model", "liveness", "stability", "bank"],
    );
}

/// Replicas that start empty (a memory-mode restart, a wiped disk) must
/// not vote until a leader has caught them up: otherwise an emptied replica
/// helps a peer that lags by the last entries win an election while the
/// server holding them is down, and acknowledged writes are lost. Rare, and
/// the first catching seed moves whenever the scenario's draws change:
/// memory seed 863 (the bank check; 573 catches it first, by the
/// stability check: a group that cannot elect) since half the seeds run
/// three managers, 87 since joins and drains joined the faults (356 with range
/// splits); 274
/// since the manager balances replicas and leaders (a GET
/// missed an acknowledged write); 420 with re-replication alone (a read of
/// every bank account added up to 1009 of 1000); 83 when transaction decisions were
/// batched (a DELETE found
/// a key whose write was lost); 505 when the bank workload joined (its
/// read of every account added up to 809 of 800: a lost debit), 762
/// before, 380 before transactions.
#[test]
fn catches_injected_no_amnesia_guard() {
    assert_caught_by_seed(&["--mode", "memory"], Bug::NoAmnesiaGuard, 863, SAFETY);
}

/// A replacement replica that votes before it caught up (added straight as
/// a voter, empty, instead of as a learner promoted once it holds every
/// committed entry): with the replica it replaces dead, the group needs
/// the new one's vote, which the amnesia guard withholds until a leader
/// caught it up, so a group that loses its leader then never elects
/// another (safe, but unavailable for good: the liveness check). First
/// caught by memory seed 20 and durable seed 14 (runs that lose a server
/// for good).
#[test]
fn catches_injected_add_voter_before_catch_up() {
    let expected = &["liveness", "control-plane", "stability"];
    assert_caught(Mode::Memory, Bug::AddVoterBeforeCatchUp, 60, expected);
    assert_caught(Mode::Durable, Bug::AddVoterBeforeCatchUp, 60, expected);
}

/// A range split that gives the new partition the data as of the entry
/// that began the split, not as of the one where it happens (after the
/// locks on its keys were released): the writes in between are lost from
/// the new partition, and reads see older values (first: memory seed 1,
/// durable seed 35, both by check `model` or `bank`).
#[test]
fn catches_injected_split_misses_last_writes() {
    assert_caught(Mode::Memory, Bug::SplitMissesLastWrites, 20, SAFETY);
    assert_caught(Mode::Durable, Bug::SplitMissesLastWrites, 60, SAFETY);
}

/// Runs the sim runner on `seed` alone with `args`, without and with `bug`:
/// it must pass without it, and fail with it on one of the `expected`
/// checks. For bugs too rare to be caught within a few hundred seeds in CI
/// time; the seed moves whenever the scenario's draws change (re-search
/// with `sim --seed 1 --seeds N --inject-bug NAME --stop-on-failure`).
fn assert_caught_by_seed(args: &[&str], bug: Bug, seed: u64, expected: &[&str]) {
    let run = |bug: Option<Bug>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sim"));
        cmd.args(["--seed", &seed.to_string()]).args(args);
        if let Some(bug) = bug {
            cmd.args(["--inject-bug", bug.name()]);
        }
        let out = cmd.output().expect("the sim runner starts");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (passed, stdout) = run(None);
    assert!(passed, "seed {seed} {args:?} fails without a bug: {stdout}");
    let (_, stdout) = run(Some(bug));
    assert!(
        stdout.contains(&format!("first caught by seed {seed}"))
            && expected
                .iter()
                .any(|c| stdout.contains(&format!("check={c}:"))),
        "{} not caught by seed {seed} {args:?} on one of {expected:?}: {stdout}",
        bug.name()
    );
}

/// A coordinator that commits although a participant refused (it counts a
/// lost conflict as a prepare) applies the other parts alone: the model
/// sees a transaction's write at one key and not at another (first: seed 1).
#[test]
fn catches_injected_txn_commit_without_all_prepares() {
    let expected = [SAFETY, &["atomicity"]].concat();
    assert_caught(
        Mode::Memory,
        Bug::TxnCommitWithoutAllPrepares,
        20,
        &expected,
    );
}

/// Prepared transactions that hold no locks let other commands read and
/// write their keys before they resolve (first: seed 1).
#[test]
fn catches_injected_txn_no_locks() {
    assert_caught(Mode::Memory, Bug::TxnNoLocks, 20, SAFETY);
    assert_caught(Mode::Durable, Bug::TxnNoLocks, 20, SAFETY);
}

/// Recovery that commits on the first "prepared" answer, without hearing
/// from every participant, commits a transaction one participant never
/// prepared (it was fenced): needs a coordinator lost mid-way, so rarer
/// (first memory seed: 66 at first, 34 with the `coordinator` faults,
/// 190 since decisions are batched and carried by prepares).
#[test]
fn catches_injected_txn_recover_with_missing_prepare() {
    let expected = [SAFETY, &["atomicity"]].concat();
    assert_caught(
        Mode::Memory,
        Bug::TxnRecoverWithMissingPrepare,
        300,
        &expected,
    );
}

/// Reads that ignore a prepared transaction's write locks miss a write
/// whose transaction already answered the client (first: seed 1).
#[test]
fn catches_injected_txn_read_ignores_locks() {
    assert_caught(Mode::Memory, Bug::TxnReadIgnoresLocks, 20, SAFETY);
}

/// Issue 11, item 9, small enough for every CI run: 12 servers, 300
/// partitions, 2 servers joining at 10 s, 4 partitions written to and
/// split from 12 s, and server 0 lost for good at 20 s; the placement
/// must converge (3 live voters per partition, no learner, a leader each,
/// ranges that tile every table, replica and leader counts within one of
/// the mean) within 300 simulated seconds, and every written key must
/// read back. `sim --scale 30,100,3,10,lose` runs the 3,000-partition
/// version (README).
#[test]
fn a_larger_cluster_converges_after_joins_splits_and_a_loss() {
    use distkv::simulation::scale::{scale_scenario, ScaleConfig};
    let rt = Runtime::with_seed_and_config(1, Config::default());
    let report = rt.block_on(scale_scenario(ScaleConfig {
        servers: 12,
        tables: 25,
        joins: 2,
        splits: 4,
        lose: true,
        bound: std::time::Duration::from_secs(300),
    }));
    assert_eq!(report.splits, 4, "{report:?}");
    assert_eq!(report.partitions, 304, "{report:?}");
    assert_eq!(report.keys_written, 80, "{report:?}");
    assert_eq!(report.keys_lost, 0, "{report:?}");
    assert_eq!(report.servers_live, 13, "{report:?}");
    assert!(
        report.converged_at.is_some(),
        "did not converge: {report:?}"
    );
}
