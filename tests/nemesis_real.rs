//! Real-cluster nemesis: linearizability of real processes under process
//! faults (the real-process companion of the madsim simulations in `sim/`).
//!
//! Each test starts a manager and 3 servers on loopback with `--replicas 3`
//! (every partition replicated on every server) and three tables, `kv=20`,
//! `tx=20` and `bank=20`, of 3 partitions each. Three `benchmark load` runs
//! go on at once for ~24 s over 20 keys each, each recording a history file
//! (docs/protocol.md, "Histories"): workload `a` (50 % GET / 50 % PUT, one key per
//! command) on `kv0..kv19`; workload `txn` (GET two keys and PUT both,
//! one command) on `tx0..tx19`, spread over `tx`'s three partitions, so
//! most commands are transactions across two partitions (see also
//! [`cross_partition_txn_load_is_serializable`], without faults); and
//! workload `bank` on 20 accounts `bank0..bank19` (every account starts at
//! 100, an absent one holds 100): a transfer GETs two balances, then CHECKs
//! both still hold what it read and PUTs both new balances in one command
//! (a transaction across partitions when the accounts are on two), and a
//! tenth of the turns read every balance with one SCAN over the three
//! partitions and check that they sum to 2000. Meanwhile the
//! test thread, the nemesis, kills servers with SIGKILL, pauses them with
//! SIGSTOP, resumes them with SIGCONT and restarts killed ones on the same
//! port with the same data directories, in rounds, from 2 s to at most
//! 17 s; then it heals everything and the loads run fault-free to the end.
//!
//! - `persistent_cluster_under_kills_and_pauses`: servers run with
//!   `--persistence`, so any number of them may be killed at once (docs/protocol.md:
//!   acknowledged writes survive the crash of every process); rounds kill or
//!   pause one server, a majority, or all three.
//! - `memory_cluster_with_a_minority_down`: servers in memory, so at most one
//!   server is faulty at any time, and a restarted (empty) server is given
//!   time to catch up before the next fault (docs/protocol.md guarantees durability
//!   only while a majority of each partition's replicas keeps its memory).
//!
//! Then, per history:
//!
//! - `benchmark check` (the project's WGL checker, with the empty initial
//!   state of a fresh cluster) must find it linearizable (strictly
//!   serializable for `txn` and `bank`): exit 0, `OK: <n> commands`. If the search
//!   gives up (exit 3: many unknown-outcome writes pending at once, each of
//!   which may or may not have landed), the history is checked again without
//!   the unknown writes whose values no read returned — sound, since each of
//!   them may never have taken effect — and that must pass. A failing
//!   history is copied to the system temporary directory (named in the
//!   panic) with the nemesis's fault log and the cluster's logs, for
//!   narrowing down.
//! - Sanity: the history has one line per command the report counted, a fair
//!   number of them `ok`; so a cluster that answered nothing cannot pass.
//! - Recovery: after the last fault healed every partition answers again
//!   (`Cluster::wait_ready`, a generous deadline), commands succeeded on
//!   every partition of the table, and every process still runs (no crash).
//! - Non-vacuity: copies of the history with one result corrupted — a GET
//!   that returns a value nobody wrote, a read that misses an acknowledged
//!   PUT (stale read: the effect of that PUT dropped), a PUT that says
//!   `not_found` on a key an earlier acknowledged PUT created — must each be
//!   rejected by `benchmark check` with exit 1. This proves the history
//!   holds enough overlapping, observed commands for the check to mean
//!   something. (The stale read applies to the one-key commands of `a`
//!   only; the other two apply to every history.) For `bank`, also a read
//!   of all balances with one balance raised by 1 (so they sum to 2001).
//!
//! And for the bank (the invariant the transactions exist for):
//!
//! - The bank load's report counts no invariant violation (every read of
//!   all balances summed to 2000, every value read was a balance) and a
//!   fair number of committed transfers and reads of all balances (so it
//!   did not pass by doing nothing).
//! - After the loads end, the cluster healed, one more SCAN of every account
//!   must find the balances summing to 2000 (absent accounts counting 100):
//!   no acknowledged, unknown-outcome or aborted transfer created or lost
//!   money, whatever the faults interrupted.
//!
//! Nothing here asserts timing: deadlines are generous, the number of `ok`
//! commands required is small, and the fault schedule (random, from a seed
//! printed at the start; `NEMESIS_SEED=<n>` replays the schedule, not the
//! exact timing) adapts to how long restarts take. Every process is killed
//! (paused ones resumed first) if the test panics.
mod common;

use common::nemesis::{Background, Nemesis};
use common::{Cluster, BENCHMARK};
use distkv::key::Key;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// `kv`, `tx` and `bank`: 3 partitions each of the 20 keys the loads use,
/// on 3 servers, so most `txn` commands (GET two keys, PUT both) and bank
/// transfers are transactions across two partitions, and a bank read of all
/// balances spans all three.
const TABLES: &str = "kv=20,tx=20,bank=20";
/// A small key space makes commands overlap on keys, so the check has
/// something to decide.
const KEYS: &str = "20";
/// How long the loads run (no warm-up, so every command is in the history).
const LOAD_S: u64 = 24;
/// The nemesis starts no new fault round after this (measured from the
/// loads' start) ...
const FAULTS_UNTIL: Duration = Duration::from_secs(14);
/// ... and holds no fault past this, then heals everything: the loads run
/// fault-free for their last ~7 s.
const HEAL_BY: Duration = Duration::from_secs(17);
/// No fault in the first moments: the loads connect and warm up.
const QUIET_START: Duration = Duration::from_secs(2);
/// Per-command deadline of the loads: long enough that a command rarely
/// times out on a loaded machine without a fault.
const COMMAND_TIMEOUT_MS: &str = "3000";
/// How long a restarted in-memory server is given to be caught up by the
/// leaders (heartbeats every 100 ms) before the next fault.
const CATCH_UP: Duration = Duration::from_secs(3);
/// The least number of `ok` commands a history must hold, and the least
/// after the final heal: far below what even a loaded machine does (hundreds
/// per second), far above what a cluster that stopped answering does.
const MIN_OK: usize = 200;
const MIN_OK_AFTER_HEAL: usize = 30;
/// The bank's accounts (`--keys` of the bank load, one account per key of
/// `bank=20`) and what their balances sum to: each starts at 100.
const BANK_ACCOUNTS: u64 = 20;
const BANK_TOTAL: u64 = BANK_ACCOUNTS * 100;
/// The least number of committed transfers and of reads of all balances the
/// bank load must do (it does thousands and hundreds on an idle machine).
const MIN_BANK_TRANSFERS: u64 = 100;
const MIN_BANK_READS: u64 = 10;
/// A value no load writes (loads write 8 random printable characters).
const NEVER_WRITTEN: &str = "never_written_by_the_load";

#[test]
fn persistent_cluster_under_kills_and_pauses() {
    run_scenario("persistent", true);
}

#[test]
fn memory_cluster_with_a_minority_down() {
    run_scenario("memory", false);
}

/// The acceptance test for cross-partition transactions: `txn` commands
/// over 20 keys of a 3-partition table, without any fault, must be strictly
/// serializable. Before transactions, each partition ran its part of a
/// command on its own, and within seconds two concurrent commands each
/// read the other's write on different partitions (a dependency cycle), so
/// `benchmark check` rejected the history.
#[test]
fn cross_partition_txn_load_is_serializable() {
    let mut cluster = Cluster::start_full(3, TABLES, false, &[], &["--replicas", "3"]);
    let path = cluster.dir.path().join("history-cross.jsonl");
    let load = spawn_load(&mut cluster, "txn", "kv", &path, 1, 5);
    let (status, stdout) = load.finish(Duration::from_secs(60));
    assert!(status.success(), "{stdout}\n{}", cluster.logs());
    let (code, out) = run_check(&path);
    assert_eq!(code, 0, "{out}");
}

/// One load's history, parsed.
struct History {
    name: &'static str,
    path: PathBuf,
    lines: Vec<Value>,
}

fn run_scenario(name: &'static str, persistence: bool) {
    let seed = std::env::var("NEMESIS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("NEMESIS_SEED is a number"))
        .unwrap_or_else(rand::random);
    eprintln!("{name}: nemesis seed {seed} (replay the schedule with NEMESIS_SEED={seed})");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut cluster = Cluster::start_full(3, TABLES, persistence, &[], &["--replicas", "3"]);
    let dir = cluster.dir.path().to_path_buf();
    let history_a = dir.join("history-a.jsonl");
    let history_txn = dir.join("history-txn.jsonl");
    let history_bank = dir.join("history-bank.jsonl");

    // Taken before the loads start: a history's clock starts later, so a
    // command whose history `invoke` is at least `t` after this was really
    // invoked at least `t` after it.
    let started = Instant::now();
    let load_a = spawn_load(&mut cluster, "a", "kv", &history_a, seed, LOAD_S);
    let load_txn = spawn_load(&mut cluster, "txn", "tx", &history_txn, seed, LOAD_S);
    let load_bank = spawn_load(&mut cluster, "bank", "bank", &history_bank, seed, LOAD_S);
    let mut nemesis = Nemesis::new(name, cluster, started);

    run_faults(&mut nemesis, &mut rng, persistence, started);
    nemesis.heal();
    let healed_at = started.elapsed();
    nemesis.mark("healed: every server runs");
    // Liveness: every partition of every table answers again.
    if let Err(e) = nemesis.cluster.wait_ready() {
        panic!(
            "the cluster did not recover after the last fault:\n{e}\nfaults:\n{}",
            nemesis.events()
        );
    }
    nemesis.mark("every partition answers");

    let limit = Duration::from_secs(LOAD_S + 60);
    let report_a = finish_load(load_a, limit, &nemesis);
    let report_txn = finish_load(load_txn, limit, &nemesis);
    let report_bank = finish_load(load_bank, limit, &nemesis);
    nemesis.mark("loads done");
    nemesis.cluster.assert_all_running();

    check_bank(&report_bank, &nemesis);
    for (history, report, table) in [
        (read_history("a", &history_a), report_a, "kv"),
        (read_history("txn", &history_txn), report_txn, "tx"),
        (read_history("bank", &history_bank), report_bank, "bank"),
    ] {
        check_history(&history, &report, table, healed_at, &nemesis, seed);
    }
}

/// The bank invariant: the load's report counts no violation and enough
/// work, and the balances still sum to [`BANK_TOTAL`] once everything ended.
fn check_bank(report: &Value, nemesis: &Nemesis) {
    let bank = &report["bank"];
    let count = |field: &str| {
        bank[field]
            .as_u64()
            .unwrap_or_else(|| panic!("bank report without {field}: {report}"))
    };
    eprintln!(
        "bank: {} transfers committed, {} aborted by CHECK, {} reads of all balances, \
         {} violations",
        count("transfers"),
        count("transfers_aborted"),
        count("reads"),
        count("violations")
    );
    assert_eq!(
        count("violations"),
        0,
        "bank: reads of all balances that did not sum to {BANK_TOTAL} (the load's stderr has \
         them): {report}\nfaults:\n{}",
        nemesis.events()
    );
    assert!(
        count("transfers") >= MIN_BANK_TRANSFERS && count("reads") >= MIN_BANK_READS,
        "bank: too few transfers or reads of all balances: {report}\nfaults:\n{}",
        nemesis.events()
    );
    let (present, sum, scan) = bank_balances(&nemesis.cluster);
    eprintln!("bank: at the end {present} accounts written, balances summing to {sum}");
    assert_eq!(
        sum,
        BANK_TOTAL,
        "bank: the balances at the end sum to {sum}, not {BANK_TOTAL}:\n{scan}\nfaults:\n{}",
        nemesis.events()
    );
}

/// One SCAN of every account (retried while the cluster answers with an
/// error): how many accounts exist, the sum of all balances (absent ones
/// counting 100), and the SCAN's output.
fn bank_balances(cluster: &Cluster) -> (u64, u64, String) {
    let manager = cluster.manager_addr.to_string();
    let probe = format!("SCAN bank0 bank{}\nSTOP\n", BANK_ACCOUNTS - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = common::run(
            BENCHMARK,
            &["--connect-addr", &manager, "--timeout-ms", "3000"],
            &probe,
        );
        let answered =
            out.status.success() && !out.stdout.contains("ERROR") && out.stdout.ends_with("STOP\n");
        if answered {
            let (mut present, mut sum) = (0, 0);
            for line in out
                .stdout
                .lines()
                .filter(|l| !l.starts_with("SCAN") && *l != "STOP")
            {
                let (key, value) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad SCAN row {line:?}"));
                assert!(key.starts_with("bank"), "a row outside the bank: {line:?}");
                present += 1;
                sum += value
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("not a balance: {line:?}: {e}"));
            }
            assert!(present <= BANK_ACCOUNTS, "{}", out.stdout);
            return (present, sum + (BANK_ACCOUNTS - present) * 100, out.stdout);
        }
        assert!(
            Instant::now() < deadline,
            "the final SCAN of the bank failed for 30 s:\n{}{}",
            out.stdout,
            out.stderr
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `benchmark load` with `workload` on [`KEYS`] keys of `table` for
/// `duration_s`, writing its history to `history`: 8 clients, 4 for `txn`
/// and `bank` (their commands are transactions, often conflicting).
fn spawn_load(
    cluster: &mut Cluster,
    workload: &str,
    table: &str,
    history: &Path,
    seed: u64,
    duration_s: u64,
) -> Background {
    let clients = if workload == "a" { "8" } else { "4" };
    // A stream per load; a load seed must fit in 53 bits.
    let stream = match workload {
        "a" => 0,
        "txn" => 1000,
        _ => 2000,
    };
    let seed = seed.wrapping_add(stream) & ((1 << 53) - 1);
    cluster.spawn_benchmark(
        &format!("load-{workload}-{table}"),
        &[
            "load",
            "--workload",
            workload,
            "--table",
            table,
            "--keys",
            KEYS,
            "--clients",
            clients,
            "--duration-s",
            &duration_s.to_string(),
            "--timeout-ms",
            COMMAND_TIMEOUT_MS,
            "--value-size",
            "8",
            "--seed",
            &seed.to_string(),
            "--history",
            history.to_str().expect("a UTF-8 path"),
            "--progress-ms",
            "0",
            "--json",
        ],
    )
}

/// Waits for a load to end; asserts it exited 0 and returns its JSON report.
fn finish_load(load: Background, limit: Duration, nemesis: &Nemesis) -> Value {
    let name = load.guard.name.clone();
    let stderr_path = load.guard.stderr_path.clone();
    let (status, stdout) = load.finish(limit);
    let stderr = stderr_path
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    assert!(
        status.success(),
        "{name} failed with {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\nfaults:\n{}",
        nemesis.events()
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: bad JSON report {line:?}: {e}"))
}

/// Sleeps for a random duration in `range` (milliseconds), but not past
/// `until`.
fn hold(rng: &mut SmallRng, range: std::ops::Range<u64>, until: Instant) {
    let want = Duration::from_millis(rng.gen_range(range));
    thread::sleep(want.min(until.saturating_duration_since(Instant::now())));
}

/// `n` distinct servers of 3, in random order.
fn pick(rng: &mut SmallRng, n: usize) -> Vec<usize> {
    let mut all = vec![0, 1, 2];
    for i in (1..all.len()).rev() {
        all.swap(i, rng.gen_range(0..=i));
    }
    all.truncate(n);
    all
}

/// Fault rounds from [`QUIET_START`] on, none begun after [`FAULTS_UNTIL`]
/// and no fault held past [`HEAL_BY`] (measured from `start`, the loads'
/// start); each round ends healed.
fn run_faults(nemesis: &mut Nemesis, rng: &mut SmallRng, persistence: bool, start: Instant) {
    thread::sleep(QUIET_START);
    let heal_by = start + HEAL_BY;
    let mut round = 0;
    while start.elapsed() < FAULTS_UNTIL {
        round += 1;
        // In memory, only one server may be faulty at once.
        let action = if persistence {
            rng.gen_range(0..6)
        } else {
            rng.gen_range(0..2)
        };
        nemesis.mark(&format!("round {round}, action {action}"));
        let mut killed_any = false;
        match action {
            // One server killed, restarted later.
            0 => {
                nemesis.kill(pick(rng, 1)[0]);
                killed_any = true;
                hold(rng, 800..2500, heal_by);
            }
            // One server paused, resumed later (a paused leader holds its
            // clients' requests until they retry elsewhere).
            1 => {
                nemesis.pause(pick(rng, 1)[0]);
                hold(rng, 800..4000, heal_by);
            }
            // A majority killed: everything unavailable until one restarts,
            // often for longer than the command deadline (so some commands
            // fail or end with an unknown outcome).
            2 => {
                for i in pick(rng, 2) {
                    nemesis.kill(i);
                }
                hold(rng, 500..4500, heal_by);
                // Bring one back first: a majority again, one still down.
                let first = nemesis.killed()[rng.gen_range(0..2)];
                nemesis.restart(first);
                hold(rng, 500..1500, heal_by);
            }
            // One paused and another killed: a majority faulty.
            3 => {
                let which = pick(rng, 2);
                nemesis.pause(which[0]);
                nemesis.kill(which[1]);
                hold(rng, 500..2500, heal_by);
            }
            // Every server killed at once (a power cut): with persistence
            // nothing acknowledged may be lost.
            4 => {
                for i in pick(rng, 3) {
                    nemesis.kill(i);
                }
                hold(rng, 300..4000, heal_by);
            }
            // A leader pause: pause one, kill another shortly after it
            // resumes (so elections overlap with a recovering member).
            _ => {
                let which = pick(rng, 2);
                nemesis.pause(which[0]);
                hold(rng, 500..1500, heal_by);
                nemesis.resume(which[0]);
                nemesis.kill(which[1]);
                hold(rng, 300..1200, heal_by);
            }
        }
        nemesis.heal();
        if start.elapsed() >= FAULTS_UNTIL {
            break;
        }
        if persistence {
            // Faults may overlap with the recovery from the last ones.
            hold(rng, 300..1500, heal_by);
        } else {
            // The next fault must not leave a majority without its memory:
            // wait until every partition answers again, and for a restarted
            // (empty) server to be caught up by the leaders.
            if let Err(e) = nemesis.cluster.wait_ready() {
                panic!(
                    "the cluster did not recover after round {round}:\n{e}\nfaults:\n{}",
                    nemesis.events()
                );
            }
            if killed_any {
                thread::sleep(CATCH_UP);
            } else {
                hold(rng, 300..1000, heal_by);
            }
        }
    }
}

fn read_history(name: &'static str, path: &Path) -> History {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad history line {l:?}: {e}")))
        .collect();
    History {
        name,
        path: path.to_path_buf(),
        lines,
    }
}

/// Exit code and stdout of `benchmark check --history path`.
fn run_check(path: &Path) -> (i32, String) {
    let out = common::run(
        BENCHMARK,
        &["check", "--history", path.to_str().expect("a UTF-8 path")],
        "",
    );
    let code = out.status.code().expect("an exit code");
    (code, format!("{}{}", out.stdout, out.stderr))
}

fn status(line: &Value) -> &str {
    line["status"].as_str().expect("a status")
}

fn num(v: &Value) -> u64 {
    v.as_u64().expect("a number")
}

/// The ops of a command as (name, key, argument); a CHECK of absence has
/// no argument (JSON `null`), nor has a GET.
fn ops(line: &Value) -> Vec<(String, String, Option<String>)> {
    line["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|op| {
            let w: Vec<Option<String>> = op
                .as_array()
                .expect("an op")
                .iter()
                .map(|w| w.as_str().map(str::to_string))
                .collect();
            let word = |i: usize| w[i].clone().expect("a word");
            (word(0), word(1), w.get(2).cloned().flatten())
        })
        .collect()
}

fn check_history(
    history: &History,
    report: &Value,
    table: &str,
    healed_at: Duration,
    nemesis: &Nemesis,
    seed: u64,
) {
    let name = history.name;
    let lines = &history.lines;
    let count = |s: &str| lines.iter().filter(|l| status(l) == s).count();
    let (ok, failed, unknown) = (count("ok"), count("fail"), count("unknown"));
    eprintln!(
        "history {name}: {} commands: {ok} ok, {failed} failed, {unknown} unknown",
        lines.len()
    );

    // The checker's verdict on the real history.
    let (whole_code, out) = run_check(&history.path);
    let mut verdict = (whole_code, out.clone(), lines.len());
    if whole_code == 3 {
        // The search gave up (each pending unknown write can double it).
        // Unknown writes whose values no read ever returned may be dropped:
        // a linearization without them is one of the whole history in
        // which they never took effect, so OK for the rest is OK for all.
        let (reduced, dropped) = drop_unobserved_unknowns(lines);
        let path = history.path.with_extension("reduced.jsonl");
        write_history(&path, &reduced);
        let (code, out) = run_check(&path);
        eprintln!(
            "history {name}: the checker gave up; without the {dropped} unknown writes \
             nobody observed: {}",
            out.lines().next().unwrap_or_default()
        );
        verdict = (code, out, reduced.len());
    }
    let (code, verdict_out, checked) = verdict;
    if code != 0 {
        let kept = keep_for_debugging(history, nemesis, seed);
        panic!(
            "history {name}: `benchmark check` exited {code} (1: not linearizable, 3: gave up)\n\
             {verdict_out}\n(on the whole history: exit {}, {out})\n\
             history kept in {}\nfaults:\n{}",
            whole_code,
            kept.display(),
            nemesis.events()
        );
    }
    eprintln!(
        "history {name}: {}",
        verdict_out.lines().next().unwrap_or_default()
    );
    assert!(
        verdict_out.starts_with(&format!("OK: {checked} commands")),
        "history {name}: {verdict_out}"
    );

    // Sanity: the history is the report's commands, a fair number ok.
    assert_eq!(
        (
            num(&report["ok"]),
            num(&report["failed"]),
            num(&report["unknown"])
        ),
        (ok as u64, failed as u64, unknown as u64),
        "history {name}: the report and the history disagree: {report}"
    );
    assert!(
        ok >= MIN_OK,
        "history {name}: only {ok} ok commands\nfaults:\n{}",
        nemesis.events()
    );

    // Recovery: after the last heal, commands succeeded on every partition.
    let map = nemesis.cluster.partition_map();
    let healed_ns = u64::try_from(healed_at.as_nanos()).expect("fits");
    let mut after_heal = 0;
    let mut partitions_ok_after_heal = BTreeSet::new();
    let mut partitions_used = BTreeSet::new();
    for line in lines {
        let keys: Vec<Key> = ops(line)
            .iter()
            .map(|(_, k, _)| Key::parse(k).expect("a key"))
            .collect();
        for key in &keys {
            partitions_used.insert(map.partition_of(key).expect("a table").id);
        }
        if status(line) == "ok" && num(&line["invoke"]) >= healed_ns {
            after_heal += 1;
            for key in &keys {
                partitions_ok_after_heal.insert(map.partition_of(key).expect("a table").id);
            }
        }
    }
    eprintln!(
        "history {name}: {after_heal} ok commands invoked after the heal at {:.1} s",
        healed_at.as_secs_f64()
    );
    assert!(
        after_heal >= MIN_OK_AFTER_HEAL,
        "history {name}: only {after_heal} ok commands after the last fault healed\nfaults:\n{}",
        nemesis.events()
    );
    assert_eq!(
        partitions_ok_after_heal,
        partitions_used,
        "history {name}: some partitions never answered after the heal\nfaults:\n{}",
        nemesis.events()
    );
    let table_partitions = map.partitions.values().filter(|p| p.table == table).count();
    assert_eq!(
        partitions_used.len(),
        table_partitions,
        "history {name}: the keys span every partition of {table}"
    );

    // Non-vacuity: corrupted copies must be rejected.
    let mut mutants = vec![("a GET of a value never written", never_written(lines))];
    if name == "a" {
        mutants.push((
            "a stale GET (an acknowledged PUT's effect dropped)",
            stale_read(lines),
        ));
    }
    mutants.push((
        "a PUT that misses an earlier acknowledged PUT",
        put_not_found(lines),
    ));
    if name == "bank" {
        mutants.push((
            "a read of all balances with one balance 1 too high",
            balance_off_by_one(lines),
        ));
    }
    for (what, mutant) in mutants {
        let mutant = mutant.unwrap_or_else(|| {
            panic!("history {name}: no command to corrupt into {what}: the history is too thin")
        });
        let path = history.path.with_extension("mutant.jsonl");
        write_history(&path, &mutant);
        let (code, out) = run_check(&path);
        assert_eq!(
            code, 1,
            "history {name} with {what}: `benchmark check` must reject it with exit 1:\n{out}"
        );
        assert!(out.starts_with("VIOLATION: "), "{out}");
        eprintln!("history {name} with {what}: rejected");
    }
}

/// Writes history lines to `path`, one JSON object per line.
fn write_history(path: &Path, lines: &[Value]) {
    let text: String = lines
        .iter()
        .map(|l| serde_json::to_string(l).expect("serializable") + "\n")
        .collect();
    std::fs::write(path, text).expect("write a history");
}

/// The history without the `unknown` commands none of whose PUTs wrote a
/// value that an `ok` GET returned (values are random, so a read value
/// names its writer); and how many were dropped. Each dropped command is
/// optional in the checker's model (it may never have taken effect), so the
/// reduced history being linearizable proves the whole one is.
fn drop_unobserved_unknowns(lines: &[Value]) -> (Vec<Value>, usize) {
    let mut read: BTreeSet<(String, String)> = BTreeSet::new();
    for line in lines.iter().filter(|l| status(l) == "ok") {
        for (i, (op, key, _)) in ops(line).into_iter().enumerate() {
            if let (true, Some(value)) = (op == "GET", line["results"][i].as_str()) {
                read.insert((key, value.to_string()));
            }
        }
    }
    let observed = |line: &Value| {
        ops(line).into_iter().any(|(op, key, arg)| {
            (op != "GET" && op != "PUT") || arg.is_some_and(|v| read.contains(&(key, v)))
        })
    };
    let reduced: Vec<Value> = lines
        .iter()
        .filter(|l| status(l) != "unknown" || observed(l))
        .cloned()
        .collect();
    let dropped = lines.len() - reduced.len();
    (reduced, dropped)
}

/// Copies a failing history and the fault log out of the cluster's
/// temporary directory (removed when the test ends); returns the new path.
fn keep_for_debugging(history: &History, nemesis: &Nemesis, seed: u64) -> PathBuf {
    let base = std::env::temp_dir().join(format!(
        "distkv-nemesis-{}-{}-seed{seed}",
        history.name,
        std::process::id()
    ));
    let path = base.with_extension("jsonl");
    let _ = std::fs::copy(&history.path, &path);
    let _ = std::fs::write(base.with_extension("faults.txt"), nemesis.events());
    let _ = std::fs::write(base.with_extension("logs.txt"), nemesis.cluster.logs());
    path
}

/// The first `ok` command with a GET that returned a value, that value
/// replaced by one nobody wrote.
fn never_written(lines: &[Value]) -> Option<Vec<Value>> {
    let mut out = lines.to_vec();
    for line in &mut out {
        if status(line) != "ok" {
            continue;
        }
        let ops = ops(line);
        for (i, (op, _, _)) in ops.iter().enumerate() {
            if op == "GET" && line["results"][i].is_string() {
                line["results"][i] = Value::from(NEVER_WRITTEN);
                return Some(out);
            }
        }
    }
    None
}

/// One-op histories: an `ok` GET of key k that returned v2, written by the
/// `ok` PUT p2 that completed before the GET began, after another `ok` PUT
/// p1 of k with value v1 had completed, is made to return v1 — as if p2's
/// acknowledged effect were lost. (Values are random, so each one has one
/// writer; candidates whose values were written twice are skipped.)
fn stale_read(lines: &[Value]) -> Option<Vec<Value>> {
    // key -> value -> how many commands wrote it
    let mut writers: BTreeMap<(String, String), usize> = BTreeMap::new();
    // (key, value) -> (invoke, complete) of the ok PUT that wrote it
    let mut ok_puts: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for line in lines {
        for (op, key, arg) in ops(line) {
            if op == "PUT" {
                let kv = (key, arg.expect("a value"));
                *writers.entry(kv.clone()).or_default() += 1;
                if status(line) == "ok" {
                    ok_puts.insert(kv, (num(&line["invoke"]), num(&line["complete"])));
                }
            }
        }
    }
    let unique = |kv: &(String, String)| writers.get(kv) == Some(&1);
    for (index, line) in lines.iter().enumerate() {
        let ops = ops(line);
        if status(line) != "ok" || ops.len() != 1 || ops[0].0 != "GET" {
            continue;
        }
        let Some(v2) = line["results"][0].as_str() else {
            continue;
        };
        let key = &ops[0].1;
        let read_invoke = num(&line["invoke"]);
        let kv2 = (key.clone(), v2.to_string());
        let Some(&(p2_invoke, p2_complete)) = ok_puts.get(&kv2) else {
            continue;
        };
        if !unique(&kv2) || p2_complete >= read_invoke {
            continue;
        }
        let earlier = ok_puts.iter().find(|((k, v), &(_, complete))| {
            k == key && v != v2 && complete < p2_invoke && unique(&(k.clone(), v.clone()))
        });
        if let Some(((_, v1), _)) = earlier {
            let mut out = lines.to_vec();
            out[index]["results"][0] = Value::from(v1.as_str());
            return Some(out);
        }
    }
    None
}

/// The first `ok` SCAN (a bank read of all balances) that returned a row,
/// that row's balance raised by 1. Every state a linearization of the
/// bank's commands can reach sums to the total (a transfer's PUTs keep the
/// sum of the balances its CHECKs guard), so no read may see 1 more.
fn balance_off_by_one(lines: &[Value]) -> Option<Vec<Value>> {
    let mut out = lines.to_vec();
    for line in &mut out {
        if status(line) != "ok" {
            continue;
        }
        for (i, (op, _, _)) in ops(line).iter().enumerate() {
            let rows = &mut line["results"][i];
            if op == "SCAN" && rows.as_array().is_some_and(|r| !r.is_empty()) {
                let row = &mut rows[0];
                let balance: u64 = row[1]
                    .as_str()
                    .and_then(|b| b.parse().ok())
                    .expect("a balance");
                row[1] = Value::from((balance + 1).to_string());
                return Some(out);
            }
        }
    }
    None
}

/// An `ok` PUT of a key that an `ok` PUT had created before it began (no
/// load deletes) made to answer `not_found`.
fn put_not_found(lines: &[Value]) -> Option<Vec<Value>> {
    // key -> earliest completion of an ok PUT of it
    let mut first_put: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines.iter().filter(|l| status(l) == "ok") {
        let complete = num(&line["complete"]);
        for (op, key, _) in ops(line) {
            if op == "PUT" {
                let e = first_put.entry(key).or_insert(complete);
                *e = (*e).min(complete);
            }
        }
    }
    for (index, line) in lines.iter().enumerate() {
        if status(line) != "ok" {
            continue;
        }
        let invoke = num(&line["invoke"]);
        for (i, (op, key, _)) in ops(line).iter().enumerate() {
            if op == "PUT" && first_put.get(key).is_some_and(|&c| c < invoke) {
                let mut out = lines.to_vec();
                out[index]["results"][i] = Value::from("not_found");
                return Some(out);
            }
        }
    }
    None
}
