//! Deterministic simulation of a whole distkv cluster on madsim (feature
//! `sim`, which needs the crate graph built with `--cfg madsim`).
//!
//! [`harness::scenario`] starts a manager, three to five servers (every
//! partition a Raft group of three replicas) and four clients on their own
//! simulated nodes, running the production code paths on `SimRuntime`;
//! injects (each seed a random subset of) packet loss, duplication and
//! latency, server kills and restarts (power cuts in durable mode, of up to
//! every server at once; a caught-up minority at a time in memory mode),
//! rolling restarts, server↔server partitions (isolation, one-way, bridges),
//! pauses, disk write/fsync errors (the server must fail-stop), manager
//! restarts and clogged client links; checks every command's outcome against the
//! per-key [`model::Model`]; heals everything and requires every client to
//! make progress; and checks the whole history for linearizability with
//! [`crate::checker`]. A violation panics with the seed and a one-line
//! description.
//!
//! Two front ends drive it, one seed per fresh OS thread (std's per-thread
//! hash seeds are only deterministic for the first madsim runtime on a
//! thread):
//! - the `sim` test target (`sim/main.rs`): `#[madsim::test]` scenarios for
//!   `MADSIM_TEST_SEED` / `MADSIM_TEST_NUM`, determinism checks, and checks
//!   that the injected bugs of [`crate::bugs`] are caught;
//! - the `sim` binary (`src/bin/sim.rs`): a parallel many-seed runner with
//!   fault selection, bug injection and a pass/fail summary.

pub mod harness;
pub mod model;
pub mod scale;
