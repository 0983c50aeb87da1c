//! `--persistence` with real processes: kill -9 at any moment, everything
//! killed at once, a torn log tail, corruption in the middle of the log,
//! checkpoints bounding the restart, and flag validation.
//!
//! The invariant checked throughout: an acknowledged write survives; a write
//! whose outcome is unknown (no reply, or an error) may or may not be there;
//! nothing else can appear.
mod common;

use common::{ChildGuard, Cluster, TABLES};
use distkv::storage::wal::{decode_record, encode_record, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A seed from the clock (printed, so a failure can be replayed with
/// `DISTKV_TEST_SEED=<seed>`).
fn seed(test: &str) -> u64 {
    let seed = std::env::var("DISTKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (DISTKV_TEST_SEED={seed} replays it)");
    seed
}

/// Every key of [`TABLES`]: `customers0..999`, `orders0..99`.
fn all_keys() -> Vec<String> {
    (0..1000)
        .map(|n| format!("customers{n}"))
        .chain((0..100).map(|n| format!("orders{n}")))
        .collect()
}

/// The whole contents of the cluster (both tables of [`TABLES`]), by SCAN.
fn read_all(cluster: &Cluster) -> BTreeMap<String, String> {
    let input = format!(
        "SCAN customers0 customers{max}\nSCAN orders0 orders{max}\nSTOP\n",
        max = u64::MAX
    );
    let out = cluster.run_benchmark(&[], &input);
    let mut data = BTreeMap::new();
    let mut in_scan = false;
    for line in out.lines() {
        if line.starts_with("SCAN ") && line.ends_with(" BEGIN") {
            in_scan = true;
        } else if line == "SCAN END" {
            in_scan = false;
        } else if in_scan {
            let (key, value) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad scan line {line:?}"));
            data.insert(key.to_string(), value.to_string());
        } else {
            assert_eq!(line, "STOP", "unexpected reply in:\n{out}");
        }
    }
    assert!(out.ends_with("STOP\n"), "{out}");
    data
}

/// Runs `requests` through one benchmark and returns its replies; asserts
/// none is an error.
fn run_ok(cluster: &Cluster, requests: &[String]) -> Vec<String> {
    let mut input = requests.join("\n");
    input.push_str("\nSTOP\n");
    let out = cluster.run_benchmark(&[], &input);
    assert!(!out.contains("ERROR"), "{out}");
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(lines.pop().as_deref(), Some("STOP"));
    lines
}

/// PUTs `key=value` for each pair (all acknowledged) and returns the pairs.
fn put_all(cluster: &Cluster, pairs: &[(String, String)]) {
    let requests: Vec<String> = pairs.iter().map(|(k, v)| format!("PUT {k} {v}")).collect();
    let replies = run_ok(cluster, &requests);
    assert_eq!(replies.len(), pairs.len());
}

/// The `wal-*.log` files of a log directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("wal-") && name.ends_with(".log")
        })
        .collect();
    out.sort();
    out
}

fn files_named(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    out.sort();
    out
}

/// Asserts every key holds exactly the expected value (`None`: absent) and
/// nothing else is stored.
fn assert_contents(got: &BTreeMap<String, String>, expected: &BTreeMap<String, String>) {
    for (key, value) in expected {
        assert_eq!(got.get(key), Some(value), "key {key}");
    }
    for key in got.keys() {
        assert!(
            expected.contains_key(key),
            "key {key} = {:?} was never written (or was deleted)",
            got[key]
        );
    }
}

/// One PUT streamed to a benchmark.
struct Write {
    key: usize,
    value: String,
}

/// Several benchmarks stream PUTs (each owning a disjoint set of keys, so
/// every key's writes are in one sequential order) while the test kills
/// servers after a random number of replies. Acknowledged writes must all be
/// there after the restart; a key may otherwise only hold a value whose write
/// was in flight or failed after its last acknowledged write.
#[test]
fn acknowledged_writes_survive_kill_9_at_any_moment() {
    const BENCHES: usize = 4;
    const WRITES_PER_BENCH: usize = 1500;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("kill_9"));
    // Small checkpoints (and so log segments) with padded values, so kills
    // also land during checkpoints and segment switches.
    let mut cluster = Cluster::start_persistent(3, TABLES, &["--checkpoint-log-mb", "1"]);
    let pad = "x".repeat(2000);
    let keys = all_keys();
    // Every key's value as last read back (all absent at first).
    let mut current: Vec<Option<String>> = vec![None; keys.len()];
    // Which servers each iteration kills.
    let plans: [Vec<usize>; 5] = [
        vec![1],
        vec![0, 1, 2],
        vec![rng.gen_range(0..3)],
        vec![0, 2],
        vec![0, 1, 2],
    ];
    let started = Instant::now();
    for (iteration, victims) in plans.iter().enumerate() {
        let kill_at = rng.gen_range(300..3000);
        // Each benchmark writes random keys it owns (key index % BENCHES).
        let writes: Vec<Vec<Write>> = (0..BENCHES)
            .map(|b| {
                let owned: Vec<usize> = (b..keys.len()).step_by(BENCHES).collect();
                (0..WRITES_PER_BENCH)
                    .map(|s| Write {
                        key: owned[rng.gen_range(0..owned.len())],
                        value: format!("i{iteration}b{b}s{s}{pad}"),
                    })
                    .collect()
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        let mut benches: Vec<ChildGuard> = writes
            .iter()
            .enumerate()
            .map(|(b, ws)| {
                let mut input: String = ws
                    .iter()
                    .map(|w| format!("PUT {} {}\n", keys[w.key], w.value))
                    .collect();
                input.push_str("STOP\n");
                cluster.stream_benchmark(&["--timeout-ms", "3000"], input, b, tx.clone())
            })
            .collect();
        drop(tx);
        let mut replies: Vec<Vec<String>> = vec![Vec::new(); BENCHES];
        let mut total = 0;
        while total < kill_at {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((b, line)) => {
                    replies[b].push(line);
                    total += 1;
                }
                Err(e) => panic!(
                    "iteration {iteration}: only {total} replies, then {e}\n{}",
                    cluster.logs()
                ),
            }
        }
        for &i in victims {
            cluster.kill_server(i);
        }
        for bench in &mut benches {
            bench.kill();
        }
        // What the benchmarks printed before they died (bounded: every
        // sender is gone once their stdout pipes close).
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok((b, line)) => replies[b].push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("benchmark stdout did not close"),
            }
            assert!(
                Instant::now() < drain_deadline,
                "benchmark stdout did not close"
            );
        }

        // The values each key may hold now: its last acknowledged value,
        // or that of a later write with an unknown outcome.
        let mut allowed: Vec<BTreeSet<Option<String>>> = current
            .iter()
            .map(|v| BTreeSet::from([v.clone()]))
            .collect();
        let mut acked = 0;
        for (b, ws) in writes.iter().enumerate() {
            let got = &replies[b];
            assert!(got.len() <= ws.len(), "more replies than requests");
            // Requests after the first unanswered one were never sent (the
            // benchmark is sequential); the unanswered one may have applied.
            for (j, w) in ws.iter().enumerate().take(got.len() + 1) {
                let key = &keys[w.key];
                let candidates = &mut allowed[w.key];
                match got.get(j) {
                    Some(reply) if !reply.starts_with("ERROR") => {
                        // Acknowledged: found/not_found must agree with what
                        // the key may hold just before.
                        let found = reply == &format!("PUT {key} found");
                        assert!(
                            found || reply == &format!("PUT {key} not_found"),
                            "bad reply {reply:?} to PUT {key}"
                        );
                        assert!(
                            candidates.iter().any(|v| v.is_some() == found),
                            "iteration {iteration}: PUT {key} {} replied {reply:?}, but the key may only hold {candidates:?}",
                            w.value
                        );
                        *candidates = BTreeSet::from([Some(w.value.clone())]);
                        acked += 1;
                    }
                    // An error (unavailable / unknown outcome) or no reply.
                    _ => {
                        candidates.insert(Some(w.value.clone()));
                    }
                }
            }
        }
        assert!(acked > kill_at / 2, "only {acked} of {total} acknowledged");

        cluster.restart_servers(victims);
        let data = read_all(&cluster);
        for (k, key) in keys.iter().enumerate() {
            let got = data.get(key).cloned();
            assert!(
                allowed[k].contains(&got),
                "iteration {iteration} (killed servers {victims:?} after {kill_at} replies): \
                 {key} holds {got:?}, allowed {:?}\n{}",
                allowed[k],
                cluster.logs()
            );
            current[k] = got;
        }
        let known: BTreeSet<&String> = keys.iter().collect();
        let unknown: Vec<&String> = data.keys().filter(|k| !known.contains(k)).collect();
        assert!(
            unknown.is_empty(),
            "keys that were never written: {unknown:?}"
        );
        let checkpoints: usize = (0..3)
            .map(|i| cluster.server_stderr(i).matches("checkpoint done").count())
            .sum();
        eprintln!(
            "iteration {iteration}: killed servers {victims:?} after {kill_at} replies; \
             {acked} writes acknowledged, all present ({checkpoints} checkpoints since \
             the last restarts, {:?} so far)",
            started.elapsed()
        );
    }
    cluster.assert_all_running();
}

/// A known data set written with PUT, DELETE and SWAP (one-op and
/// multi-partition commands), then the manager and every server killed at
/// once and restarted: every value is back.
#[test]
fn all_processes_killed_at_once_then_restarted() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("kill_all"));
    let mut cluster = Cluster::start_persistent(3, TABLES, &[]);
    // Keys over every partition, including numbers past the key space.
    let keys: Vec<String> = (0..60)
        .map(|i| format!("customers{}", i * 17))
        .chain((0..20).map(|i| format!("orders{}", i * 5)))
        .chain(["customers5000".to_string(), format!("orders{}", u64::MAX)])
        .collect();
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for seq in 0..700 {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let value = format!("v{seq}");
        let old = model.get(&key).cloned();
        match rng.gen_range(0..10) {
            0..=4 => {
                let found = if old.is_some() { "found" } else { "not_found" };
                expected.push(format!("PUT {key} {found}"));
                requests.push(format!("PUT {key} {value}"));
                model.insert(key, value);
            }
            5..=6 => {
                let found = if old.is_some() { "found" } else { "not_found" };
                expected.push(format!("DELETE {key} {found}"));
                requests.push(format!("DELETE {key}"));
                model.remove(&key);
            }
            7..=8 => {
                expected.push(format!("SWAP {key} {}", old.as_deref().unwrap_or("null")));
                requests.push(format!("SWAP {key} {value}"));
                if old.is_some() {
                    model.insert(key, value);
                }
            }
            _ => {
                expected.push(format!("GET {key} {}", old.as_deref().unwrap_or("null")));
                requests.push(format!("GET {key}"));
            }
        }
    }
    assert_eq!(run_ok(&cluster, &requests), expected);
    // A transaction over partitions of every server.
    let (a, b, c) = ("customers1", "customers500", "orders99");
    let script = format!("cmd\nop PUT {a} tx1\nop SWAP {b} tx2\nop DELETE {c}\ndone\n");
    let out = cluster.run_client(&script);
    let expected_tx = format!(
        "PUT {a} {}\nSWAP {b} {}\nDELETE {c} {}\nCOMMITTED\n",
        if model.contains_key(a) {
            "found"
        } else {
            "not_found"
        },
        model.get(b).map_or("null", String::as_str),
        if model.contains_key(c) {
            "found"
        } else {
            "not_found"
        },
    );
    assert_eq!(out, expected_tx);
    model.insert(a.to_string(), "tx1".to_string());
    if model.contains_key(b) {
        model.insert(b.to_string(), "tx2".to_string());
    }
    model.remove(c);
    assert_contents(&read_all(&cluster), &model);

    cluster.kill_all();
    cluster.start_all();
    assert_contents(&read_all(&cluster), &model);
    // And it goes on from there.
    let replies = run_ok(&cluster, &[format!("PUT {a} after"), format!("GET {a}")]);
    assert_eq!(
        replies,
        [format!("PUT {a} found"), format!("GET {a} after")]
    );
    cluster.assert_all_running();
}

/// The LSN of the last valid record in a segment file.
fn last_lsn(segment: &[u8]) -> u64 {
    let mut offset = SEGMENT_HEADER_LEN;
    let mut last = None;
    while let Ok((record, used)) = decode_record(&segment[offset..]) {
        last = Some(record.lsn);
        offset += used;
    }
    assert_eq!(
        offset,
        segment.len(),
        "the segment ends with a whole record"
    );
    last.expect("the segment has records")
}

/// Garbage after the last record of the newest segment (what a crash in
/// the middle of a write leaves) is cut off with a warning at restart, and
/// every acknowledged write is served.
#[test]
fn garbage_appended_to_the_newest_log_file_is_truncated() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("torn_tail"));
    let mut cluster = Cluster::start_persistent(1, TABLES, &[]);
    let mut expected = BTreeMap::new();
    let variants = [
        "random bytes",
        "half a record header",
        "a record cut in its payload",
    ];
    for (round, variant) in variants.iter().enumerate() {
        let pairs: Vec<(String, String)> = (0..60)
            .map(|i| {
                let key = if i % 3 == 0 {
                    format!("orders{}", (i + round * 7) % 100)
                } else {
                    format!("customers{}", (i * 13 + round * 101) % 1000)
                };
                (key, format!("r{round}n{i}"))
            })
            .collect();
        put_all(&cluster, &pairs);
        expected.extend(pairs);
        cluster.kill_server(0);

        let segment = segments(&cluster.log_dir(0)).pop().expect("a log segment");
        let before = std::fs::read(&segment).unwrap();
        let garbage: Vec<u8> = match round {
            0 => (0..rng.gen_range(1..4000)).map(|_| rng.gen()).collect(),
            _ => {
                let mut record = Vec::new();
                let payload: Vec<u8> = (0..100).map(|_| rng.gen()).collect();
                encode_record(&mut record, last_lsn(&before) + 1, 0, 1, &payload);
                let cut = if round == 1 {
                    RECORD_HEADER_LEN / 2
                } else {
                    RECORD_HEADER_LEN + payload.len() / 2
                };
                record.truncate(cut);
                record
            }
        };
        let mut torn = before.clone();
        torn.extend_from_slice(&garbage);
        std::fs::write(&segment, &torn).unwrap();

        cluster.restart_server(0);
        let log = cluster.server_stderr(0);
        assert!(
            log.contains("WARN") && log.contains("truncating torn log tail"),
            "{variant}: no truncation warning in:\n{log}"
        );
        // The file was cut back to its last whole record; the restarted
        // server may since have appended new records to it (with Raft, at
        // least its new term and vote), which must be whole, valid records
        // right after the old ones: none of the garbage is left.
        let after = std::fs::read(&segment).unwrap();
        assert!(
            after.len() >= before.len() && after[..before.len()] == before[..],
            "{variant}: the file no longer starts with its records from before the crash \
             ({} bytes before, {} now)",
            before.len(),
            after.len()
        );
        if after.len() > before.len() {
            // Panics unless the file ends with a whole record.
            let new_last = last_lsn(&after);
            assert!(
                new_last > last_lsn(&before),
                "{variant}: records appended after the truncation have new LSNs"
            );
            let (record, _) = decode_record(&after[before.len()..]).unwrap_or_else(|e| {
                panic!("{variant}: what follows the old records is not a record: {e}")
            });
            assert_eq!(
                record.lsn,
                last_lsn(&before) + 1,
                "{variant}: the first record after the truncation point continues the LSNs"
            );
        }
        assert_contents(&read_all(&cluster), &expected);
        eprintln!("{variant}: {} garbage bytes truncated", garbage.len());
    }
    cluster.assert_all_running();
}

/// A flipped byte inside an early record, with valid records after it, is
/// not a torn tail: the server must refuse to start, name the file and byte
/// offset, and not panic. Restoring the byte lets it start again.
#[test]
fn a_corrupt_record_in_the_middle_is_refused() {
    let mut cluster = Cluster::start_persistent(1, TABLES, &[]);
    let pairs: Vec<(String, String)> = (0..200)
        .map(|i| (format!("customers{}", i * 5), format!("value{i}")))
        .collect();
    put_all(&cluster, &pairs);
    cluster.kill_server(0);

    let segment = segments(&cluster.log_dir(0)).remove(0);
    let good = std::fs::read(&segment).unwrap();
    // A byte in the payload of the first record, which starts right after
    // the segment header.
    let at = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1;
    assert!(good.len() > at + 1000, "enough records follow");
    let mut bad = good.clone();
    bad[at] ^= 0x5a;
    std::fs::write(&segment, &bad).unwrap();

    cluster.spawn_server(0);
    let status = cluster
        .wait_server_exit(0, Duration::from_secs(10))
        .expect("the server must exit on a corrupt log, not run");
    let log = cluster.server_stderr(0);
    assert!(!status.success(), "exit status {status}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let name = segment.display().to_string();
    assert!(
        log.contains(&name) && log.contains(&format!("byte offset {SEGMENT_HEADER_LEN}")),
        "stderr must name {name} and offset {SEGMENT_HEADER_LEN}:\n{log}"
    );
    let error_line = log
        .lines()
        .find(|l| l.contains("corrupt"))
        .unwrap_or_default();
    eprintln!("refused with: {error_line}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bad,
        "a refused log is left untouched (not truncated)"
    );

    std::fs::write(&segment, &good).unwrap();
    cluster.restart_server(0);
    assert_contents(&read_all(&cluster), &pairs.into_iter().collect());
    cluster.assert_all_running();
}

/// With `--checkpoint-log-mb 1`, ~20 MiB of writes make many checkpoints:
/// old log segments are deleted, snapshots exist, and a restart replays only
/// the log written since the last checkpoint.
#[test]
fn restart_replays_only_the_log_tail_after_checkpoints() {
    const LOAD_OPS: u64 = 16_000;
    const VALUE_SIZE: u64 = 1250;
    let mut cluster = Cluster::start_persistent(1, TABLES, &["--checkpoint-log-mb", "1"]);
    // Known data before the load (it ends up in snapshots only) ...
    let early: Vec<(String, String)> = (0..100)
        .map(|i| (format!("orders{i}"), format!("early{i}")))
        .collect();
    put_all(&cluster, &early);
    // ... ~20 MiB of log over 500 keys ...
    let load = cluster.run_benchmark(
        &[
            "load",
            "--workload",
            "w",
            "--clients",
            "16",
            "--ops",
            &LOAD_OPS.to_string(),
            "--value-size",
            &VALUE_SIZE.to_string(),
            "--keys",
            "500",
            "--table",
            "customers",
            "--progress-ms",
            "0",
            "--json",
        ],
        "",
    );
    assert!(
        load.contains(&format!("\"ok\":{LOAD_OPS}")),
        "every load command succeeded: {load}"
    );
    // ... and known data after it (in the log tail).
    let late: Vec<(String, String)> = (0..50)
        .map(|i| (format!("orders{i}"), format!("late{i}")))
        .collect();
    put_all(&cluster, &late);
    let writes = LOAD_OPS + (early.len() + late.len()) as u64;
    let before = read_all(&cluster);
    assert_eq!(before.len(), 600, "500 customers and 100 orders");

    let log = cluster.server_stderr(0);
    let checkpoints = log.matches("checkpoint done").count();
    assert!(checkpoints >= 5, "only {checkpoints} checkpoints:\n{log}");
    cluster.kill_server(0);
    let wal = segments(&cluster.log_dir(0));
    let log_bytes: u64 = wal
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let snaps = files_named(&cluster.db_dir(0), "snap-", ".snap");
    eprintln!(
        "after {writes} writes: {checkpoints} checkpoints, {} log segments ({log_bytes} bytes), snapshots {snaps:?}",
        wal.len()
    );
    assert!(snaps.len() >= 2, "a snapshot per partition: {snaps:?}");
    assert!(
        !wal.iter()
            .any(|p| p.ends_with("wal-00000000000000000001.log")),
        "the first log segment was deleted after a checkpoint: {wal:?}"
    );
    assert!(
        log_bytes < 8 << 20,
        "the log behind the checkpoints is deleted: {log_bytes} bytes left in {wal:?}"
    );

    // Restart, timed until recovery is logged and until the first
    // successful GET.
    let started = Instant::now();
    cluster.spawn_server(0);
    let deadline = started + Duration::from_secs(20);
    let recovery_time = loop {
        if cluster.server_stderr(0).contains("storage recovered") {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline && cluster.server_running(0),
            "the server did not recover within 20 s:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let restart_time = loop {
        let out = common::run(
            common::BENCHMARK,
            &[
                "--connect-addr",
                &cluster.manager_addr.to_string(),
                "--timeout-ms",
                "100",
            ],
            "GET orders0\nSTOP\n",
        );
        if out.stdout.starts_with("GET orders0 late0\n") {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no successful GET within 20 s: {out:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let log = cluster.server_stderr(0);
    let recovered = log
        .lines()
        .find(|l| l.contains("storage recovered"))
        .unwrap_or_else(|| panic!("no 'storage recovered' line:\n{log}"));
    let field = |name: &str| -> u64 {
        let start = recovered
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name}= in {recovered:?}"))
            + name.len()
            + 1;
        recovered[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (snapshots, replayed) = (field("snapshots"), field("replayed"));
    eprintln!(
        "restart: {recovery_time:?} from process start to 'storage recovered', \
         {restart_time:?} to the first successful GET; \
         snapshots={snapshots} replayed={replayed} of {writes} writes"
    );
    assert!(snapshots >= 2, "{recovered}");
    assert!(
        replayed * 8 < writes,
        "replayed {replayed} records of {writes} writes: {recovered}"
    );
    cluster.wait_ready().unwrap();
    assert_eq!(read_all(&cluster), before, "all data is back");
    cluster.assert_all_running();
}

/// Invalid storage flags: a non-zero exit with a one-line reason, never a
/// panic; a log or data path that is a regular file is named in the error.
#[test]
fn persistence_flag_validation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db").display().to_string();
    let log = dir.path().join("log").display().to_string();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let file = file.display().to_string();
    let listen = common::free_ports(1)[0].to_string();
    let base = ["--listen-addr", &listen, "--persistence"];
    let cases: [(&[&str], &str); 7] = [
        (
            &["--batch-size", "0", "--db-path", &db, "--log-path", &log],
            "--batch-size",
        ),
        (
            &[
                "--batch-timeout",
                "-1",
                "--db-path",
                &db,
                "--log-path",
                &log,
            ],
            "-1",
        ),
        (
            &["--batch-timeout=-1", "--db-path", &db, "--log-path", &log],
            "--batch-timeout",
        ),
        (
            &[
                "--batch-timeout",
                "abc",
                "--db-path",
                &db,
                "--log-path",
                &log,
            ],
            "--batch-timeout",
        ),
        (
            &[
                "--checkpoint-log-mb",
                "0",
                "--db-path",
                &db,
                "--log-path",
                &log,
            ],
            "--checkpoint-log-mb",
        ),
        (&["--db-path", &db, "--log-path", &file], &file),
        (&["--db-path", &file, "--log-path", &log], &file),
    ];
    for (flags, names) in cases {
        let args: Vec<&str> = base.iter().chain(flags).copied().collect();
        let out = common::run(common::SERVER, &args, "");
        assert!(!out.status.success(), "{flags:?} must fail: {out:?}");
        assert!(
            !out.stderr.contains("panicked"),
            "{flags:?}: {}",
            out.stderr
        );
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(names),
            "{flags:?}: the first stderr line must be the reason naming {names:?}:\n{}",
            out.stderr
        );
        eprintln!("{flags:?} -> {first}");
    }
}
