//! Deterministic simulation of one Raft group on madsim
//! (`cargo test --release --features sim --test sim_raft`).
//!
//! Each simulated node (a pool of five; the group starts with three or five
//! voters and the others as non-members) runs one member of the group
//! through a small driver
//! ([`node`]), which compacts its log every few applied entries (so
//! followers that fall behind get snapshots, in chunks), on the production
//! trait layer: `SimRuntime` for the network
//! (bincode messages in madsim datagrams), timers and randomness, and a
//! harness-owned `SimDisk` holding the member's write-ahead log
//! (`storage::wal` + `storage::group_commit`), which loses, keeps or tears
//! unsynced bytes when the node is killed. [`scenario`] describes the
//! workload, the nemesis and the membership operator (one-server-at-a-time
//! changes through the leader while the faults go on: add a learner,
//! promote it once caught up, remove a voter, remove a learner, and moves
//! of all three, the way distkv's manager re-replicates; removed nodes keep
//! running with their old state, and may be added back); [`checker`] what
//! is verified, over every node of the pool, members or not:
//!
//! 1. **election safety**: at most one leader per term, ever;
//! 2. **committed entries never change**: every index any node ever applied
//!    (across nodes and restarts) has one term and payload, and every node's
//!    state machine at an index is the same (a hash chain over everything
//!    it applied, which snapshots carry: a snapshot taken, installed or
//!    recovered is checked against it);
//! 3. **log matching** spot checks over the nodes' published logs (and their
//!    committed prefixes against what was applied), comparing only the
//!    entries both logs still hold after compaction; terms never decrease
//!    within a log;
//! 4. **acknowledged proposals are never lost**: after the final heal every
//!    acknowledged value is applied at its index on every member (voter or
//!    learner) of the final membership;
//! 5. **ReadIndex reads** see every value acknowledged before they were
//!    invoked (the register at the read index);
//!
//! then **liveness**: after healing, a leader, a committed proposal, a
//! successful read and the final membership's members at the leader's
//! applied index within 20 s of simulated time.
//!
//! Removed nodes are not told they were removed (the leader stops sending
//! to them as soon as the removal is in its log). They are held to the
//! same checks: one removed node that never learned of its removal still
//! campaigns in its old membership, but it cannot win: the removal is
//! committed on a majority of the new membership, whose logs are longer
//! than its own and which overlaps every majority of its old one
//! (one-server-at-a-time changes); with pre-vote it does not even raise
//! its term, and with check-quorum members ignore it while their leader is
//! alive (see ARCHITECTURE.md, Raft).
//!
//! # Running
//! ```text
//! MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=300 cargo test --release --features sim --test sim_raft raft_chaos
//! MADSIM_TEST_SEED=<seed> cargo test --release --features sim --test sim_raft raft_chaos -- --exact --nocapture
//! SIM_RAFT_BUG=forget-vote MADSIM_TEST_SEED=<seed> cargo test ... raft_chaos -- --exact --nocapture
//! ```
//! A failure panics with `seed <s>: [<check>] ...` and a one-line reproduce
//! command; madsim prints the seed too. `SIM_RAFT_BUG` injects one of
//! `distkv::bugs` (`commit-without-quorum`, `conf-change-unsafe`,
//! `removed-member-votes` in the core; `forget-vote`,
//! `stale-read`, `ack-before-fsync`, `snapshot-off-by-one` in this driver).
//!
//! `SIM_RAFT_VERBOSE=1` prints every traced event (faults, restarts with
//! what recovery found, leaders, client outcomes) with its simulated time.
//!
//! The other tests check that a seed always runs the same way
//! (`same_seed_same_run`, `madsim_determinism_check`); that the checkers
//! catch the injected bugs (`catches_*`: each hunts seeds `1..=N` and prints
//! the first seed that failed and which check caught it;
//! `bug_detection_rates`, ignored, prints how often); keep the seeds that
//! found real bugs (`regression_seed_*`); and cover the disk workaround
//! ([`disk`]).
#![cfg(madsim)]

mod checker;
mod node;
mod scenario;
mod shared;

use checker::Check;
use distkv::bugs::{self, Bug};
use madsim::runtime::Runtime;
use madsim::Config;
use scenario::Summary;

/// The bug named by `SIM_RAFT_BUG`, if any (for reproducing hunted seeds).
fn bug_from_env() -> Option<Bug> {
    let name = std::env::var("SIM_RAFT_BUG").ok()?;
    Some(Bug::parse(&name).unwrap_or_else(|| panic!("SIM_RAFT_BUG={name}: unknown bug")))
}

/// The scenario for the seeds given by `MADSIM_TEST_SEED` / `MADSIM_TEST_NUM`.
#[madsim::test]
async fn raft_chaos() {
    let bug = bug_from_env();
    if let Some(bug) = bug {
        bugs::enable(bug);
    }
    scenario::scenario(bug).await;
}

async fn scenario_plain() -> Summary {
    scenario::scenario(None).await
}

/// Runs `seed` on a fresh OS thread (std's per-thread hash seeds are only
/// deterministic for the first runtime on a thread), with `bug` enabled on
/// that thread. `Err` carries the panic message.
fn run_seed(seed: u64, bug: Option<Bug>) -> Result<Summary, String> {
    std::thread::spawn(move || {
        if let Some(bug) = bug {
            bugs::enable(bug);
        }
        let rt = Runtime::with_seed_and_config(seed, Config::default());
        rt.block_on(scenario::scenario(bug))
    })
    .join()
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "<non-string panic>".into())
    })
}

/// The same seed gives the same run: identical counts, faults, outcomes and
/// simulated times (the trace hash covers every fault, leader, client
/// outcome and restart).
#[test]
fn same_seed_same_run() {
    let a = run_seed(7, None).unwrap();
    let b = run_seed(7, None).unwrap();
    assert_eq!(a, b, "seed 7 ran differently twice");
    let c = run_seed(8, None).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash, "seeds 7 and 8 ran identically");
}

/// madsim's own check: runs twice and compares every random draw.
#[test]
fn madsim_determinism_check() {
    Runtime::check_determinism(3, Config::default(), scenario_plain);
}

/// Regression: seed 286 found a liveness bug in `src/raft` (fixed).
///
/// A follower learns the commit index from the same append that carries the
/// entries, so while that write is still in flight its commit index is ahead
/// of its durable log. `handle_append` answered any append with
/// `prev_log_index < commit` at once (not after persisting) with
/// `Ok(commit)`, claiming entries that were not on disk yet. In this seed
/// (3 nodes, a duplicated stale append) node 1 claimed index 198, was killed
/// before its fsync finished and came back with 197 entries. The leader
/// (node 2, term 6) had match index 198 for it, which never decreases; every
/// append it sent was rejected for the missing entry 198, and each rejection
/// was then ignored as "stale" (rejected index <= match index), so node 1
/// never caught up: after the heal the leader and node 3 reached 244 while
/// node 1 stayed at 197 (the liveness check). The fix: such an immediate
/// answer claims only `min(commit, persisted)`; unit test
/// `raft::tests::a_follower_never_acknowledges_entries_that_are_not_durable_yet`.
/// (A seed pins a schedule only as long as the scenario draws its random
/// numbers in the same order; the unit test pins the bug itself.)
#[test]
fn regression_seed_286_follower_acked_entries_not_yet_durable() {
    let summary = run_seed(286, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.final_index > 0);
}

/// Regression: seed 1964 (no pre-vote, no check-quorum) failed liveness once
/// the scenario changed memberships. Node 3 was removed without learning
/// it, and after the heal kept campaigning in its old membership: it could
/// not win (the members' logs hold its removal), but without the
/// check-quorum lease every Vote of a higher term made the members step up
/// and the leader step down, ~160 elections in 20 s, and a learner that
/// needed a snapshot never got one. Not a bug of the core: the dissertation
/// (§4.2.3) prevents it with exactly that lease, and distkv's servers run
/// with pre-vote and check-quorum and drop removed replicas. The harness
/// now does what the manager does in seeds without check-quorum: after the
/// heal, nodes outside the committed membership are stopped
/// (`World::retire_removed`).
#[test]
fn regression_seed_1964_removed_node_disrupts_without_check_quorum() {
    let summary = run_seed(1964, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.final_index > 0);
}

/// What caught an injected bug: a checker, or an assertion in the core.
fn classify(msg: &str) -> String {
    match Check::from_message(msg) {
        Some(c) => c.name().to_string(),
        None if msg.contains("Raft safety") => "core assertion (src/raft)".into(),
        None => format!("other panic: {}", msg.lines().next().unwrap_or("")),
    }
}

/// Runs seeds `1..=count` with `bug` injected; returns the first failing
/// seed and what caught it.
fn hunt(bug: Bug, count: u64) -> Option<(u64, String)> {
    (1..=count).find_map(|seed| match run_seed(seed, Some(bug)) {
        Ok(_) => None,
        Err(msg) => Some((seed, classify(&msg))),
    })
}

fn assert_caught(bug: Bug, count: u64) {
    let found = hunt(bug, count);
    match &found {
        Some((seed, check)) => println!(
            "bug {}: first caught by seed {seed} (of 1..={count}), check: {check}; \
             reproduce: {}",
            bug.name(),
            scenario::reproduce(*seed, Some(bug))
        ),
        None => println!("bug {}: not caught in seeds 1..={count}", bug.name()),
    }
    assert!(
        found.is_some(),
        "{} went unnoticed in {count} seeds",
        bug.name()
    );
}

/// A leader that commits what its own log has, without a majority: an
/// entry "committed" on one node is lost or replaced once another leader
/// takes over.
#[test]
fn catches_commit_without_quorum() {
    assert_caught(Bug::CommitWithoutQuorum, 200);
}

/// A member that does not recover its term and vote after a restart can
/// vote twice in one term: two leaders.
#[test]
fn catches_forget_vote() {
    assert_caught(Bug::ForgetVote, 500);
}

/// A leader that serves reads from its local state without ReadIndex
/// returns stale values while a newer leader is committing.
#[test]
fn catches_stale_read() {
    assert_caught(Bug::StaleRead, 200);
}

/// Votes and append acknowledgements sent before the state they promise is
/// fsynced: a power cut makes an acknowledged entry (or a vote) vanish.
#[test]
fn catches_ack_before_fsync() {
    assert_caught(Bug::AckBeforeFsync, 500);
}

/// A snapshot named `applied` that holds the state one entry earlier: a
/// follower that installs it never applies that entry (a lost write, or a
/// state machine that differs from everyone else's).
#[test]
fn catches_snapshot_off_by_one() {
    assert_caught(Bug::SnapshotOffByOne, 100);
}

/// A leader that accepts a membership change while an earlier one is
/// uncommitted: with two changes in flight (the operator's back-to-back
/// pairs: promote X then remove Y, or remove two of five voters) the old
/// and the new membership have disjoint majorities, and each side can
/// commit its own entries. Caught in 22 of seeds 1..=500 (first: 7), by
/// committed-entry-changed (21) and election-safety (1).
#[test]
fn catches_conf_change_unsafe() {
    assert_caught(Bug::ConfChangeUnsafe, 500);
}

/// A candidate that counts votes (and a leader that counts
/// acknowledgements) from learners and other non-voters: a "majority" that
/// does not intersect the voters' real majority. Caught in 158 of seeds
/// 1..=500 (first: 7), by committed-entry-changed (148) and election-safety
/// (10).
#[test]
fn catches_removed_member_votes() {
    assert_caught(Bug::RemovedMemberVotes, 500);
}

/// How often each injected bug is caught, and by which check, over seeds
/// `1..=SIM_RAFT_RATE_SEEDS` (default 100; `SIM_RAFT_BUG` picks one bug).
/// Informational; run with
/// `cargo test --release --features sim --test sim_raft bug_detection_rates -- --ignored --nocapture`.
#[test]
#[ignore]
fn bug_detection_rates() {
    let count: u64 = std::env::var("SIM_RAFT_RATE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let all = [
        Bug::CommitWithoutQuorum,
        Bug::ForgetVote,
        Bug::StaleRead,
        Bug::AckBeforeFsync,
        Bug::SnapshotOffByOne,
        Bug::ConfChangeUnsafe,
        Bug::RemovedMemberVotes,
    ];
    // `SIM_RAFT_BUG` narrows it to one bug.
    let only = bug_from_env();
    for bug in all.into_iter().filter(|b| only.is_none_or(|o| o == *b)) {
        let mut caught: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for seed in 1..=count {
            if let Err(msg) = run_seed(seed, Some(bug)) {
                caught.entry(classify(&msg)).or_default().push(seed);
            }
        }
        let total: usize = caught.values().map(Vec::len).sum();
        println!("bug {}: {total}/{count} seeds failed", bug.name());
        for (check, seeds) in &caught {
            println!("  {check}: {} seeds, first {}", seeds.len(), seeds[0]);
        }
    }
}

/// Regression (seed 2211): `SimDisk` once made only growing syncs durable,
/// so a torn tail cut by WAL recovery came back at the next crash. A cut
/// torn tail must stay cut, and a record synced after the cut survive.
#[test]
fn sim_disk_truncation_is_durable() {
    use distkv::rt::{Disk, SimDisk};
    use std::path::Path;
    let rt = Runtime::with_seed_and_config(1, Config::default());
    rt.block_on(async {
        let sim = SimDisk::new();
        let d = sim.clone();
        let (dir, f) = (Path::new("/w"), Path::new("/w/seg.log"));
        d.create_dir_all(dir).await.unwrap();
        d.append(f, b"good").await.unwrap();
        d.sync(f).await.unwrap();
        d.sync_dir(dir).await.unwrap();
        d.append(f, b"TORN-TAIL").await.unwrap();
        sim.crash(|n| n - 1); // keep every unsynced byte, torn
        let len = d.read(f).await.unwrap().len() as u64;
        assert!(len > 4);
        d.truncate(f, 4).await.unwrap(); // recovery cuts the torn tail
        d.sync(f).await.unwrap();
        d.append(f, b"new").await.unwrap();
        d.sync(f).await.unwrap();
        sim.crash_drop_all();
        assert_eq!(d.read(f).await.unwrap(), b"goodnew");
    });
}
