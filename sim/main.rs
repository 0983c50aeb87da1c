//! Deterministic simulation of a distkv cluster on madsim
//! (`cargo test --features sim --test sim`).
//!
//! The scenario and its checker live in the library
//! ([`distkv::simulation`]): [`harness::scenario`] starts a manager, three
//! servers and four clients on their own simulated nodes, running the
//! production code paths on `SimRuntime`; injects packet loss, latency,
//! server kills and restarts and clogged links; checks every command's
//! outcome against the per-key [`distkv::simulation::model::Model`]; and
//! finally heals everything and requires every client to make progress. See
//! each module's docs for what exactly is checked. The `sim` binary
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
//! binary checks that runs are deterministic, and that the checker catches
//! the bugs `distkv::bugs` can inject.
#![cfg(madsim)]

mod model_tests;

use distkv::bugs::Bug;
use distkv::simulation::harness::{self, Mode, Summary};
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
#[test]
fn same_seed_same_run() {
    for mode in [Mode::Memory, Mode::Durable] {
        let a = run_seed(mode, 7);
        let b = run_seed(mode, 7);
        assert_eq!(a, b, "{mode:?}: seed 7 ran differently twice");
        let c = run_seed(mode, 8);
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "{mode:?}: seeds 7 and 8 ran identically"
        );
    }
}

/// madsim's own check: runs twice and compares every random draw.
#[test]
fn madsim_determinism_check() {
    Runtime::check_determinism(3, Config::default(), harness::scenario_memory);
    Runtime::check_determinism(3, Config::default(), harness::scenario_durable);
}

/// Regression (a harness bug, not a library one): under 2.6 % loss with a
/// 1.5 s command deadline, client 1's initial map fetch lost every attempt
/// and `Client::connect` rightly returned `Unavailable`; the harness treated
/// that as fatal. It now retries connecting, as a real client would.
#[test]
fn regression_seed_10941_connect_under_loss() {
    run_seed(Mode::Memory, 10941);
}

/// Runs seeds `1..=count` with `bug` injected (see `distkv::bugs`) and
/// returns the first seed whose run fails, if any.
fn first_failing_seed(mode: Mode, bug: Bug, count: u64) -> Option<u64> {
    (1..=count).find(|&seed| {
        std::thread::spawn(move || {
            // Per thread: only this run sees the bug.
            distkv::bugs::enable(bug);
            let rt = Runtime::with_seed_and_config(seed, Config::default());
            rt.block_on(harness::scenario(mode))
        })
        .join()
        .is_err()
    })
}

/// The checker is not vacuous: a server that re-applies retried writes
/// (ignoring its session table) is caught, in both modes.
#[test]
fn catches_injected_duplicate_apply() {
    for mode in [Mode::Memory, Mode::Durable] {
        let found = first_failing_seed(mode, Bug::DuplicateApply, 20);
        assert!(found.is_some(), "{mode:?}: duplicate-apply went unnoticed");
    }
}

/// A durable server that acknowledges writes before they are fsynced loses
/// acknowledged writes in a power cut; the durable scenario must notice
/// (about one seed in eight does: the kill must land in the window).
#[test]
fn catches_injected_ack_before_fsync() {
    let found = first_failing_seed(Mode::Durable, Bug::AckBeforeFsync, 60);
    assert!(
        found.is_some(),
        "ack-before-fsync went unnoticed in 60 seeds"
    );
}
