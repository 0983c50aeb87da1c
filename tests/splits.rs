//! Range splits on real processes: a durable 3-server cluster whose
//! manager splits partitions past a small key count (`--split-keys 150`)
//! while `benchmark load` writes (transactions across partitions, with a
//! history), and an operator's `admin split` at a chosen key. The map keeps
//! tiling the table, every key is counted in exactly one partition, nothing
//! is lost, and the history checks as strictly serializable.
mod common;

use common::{run, Cluster, BENCHMARK};
use serde_json::Value;
use std::time::{Duration, Instant};

fn partitions(cluster: &Cluster) -> Vec<Value> {
    cluster.admin_json("partitions")
}

/// The partitions of `table` in key order, checked to tile it: the first
/// starts at 0, each starts where the one before ends, the last is open.
fn tiling(ps: &[Value], table: &str) -> Vec<Value> {
    let mine: Vec<Value> = ps.iter().filter(|p| p["table"] == table).cloned().collect();
    let mut next = Some(0u64);
    for p in &mine {
        assert_eq!(p["start"].as_u64(), next, "{table} does not tile: {ps:?}");
        next = p["end"].as_u64();
    }
    assert_eq!(next, None, "the last partition of {table} is open-ended");
    mine
}

/// Waits until the manager sees a leader for every partition of `table`
/// and the leaders' key counts add up to `keys`.
fn wait_counted(cluster: &Cluster, table: &str, keys: u64, limit: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let ps = partitions(cluster);
        let mine = tiling(&ps, table);
        let led = mine.iter().all(|p| p["leader"].is_u64());
        let counted: u64 = mine.iter().map(|p| p["keys"].as_u64().unwrap()).sum();
        if led && counted == keys {
            return mine;
        }
        assert!(
            start.elapsed() < limit,
            "partitions of {table} do not hold {keys} keys (led: {led}, counted: {counted}): {mine:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every key of `table` that a whole-table SCAN returns.
fn scan_count(cluster: &Cluster, table: &str) -> u64 {
    let out = cluster.run_benchmark(&[], &format!("SCAN {table}0 {table}100000\nSTOP\n"));
    out.lines()
        .filter(|l| l.starts_with(table) && l.contains(' '))
        .count() as u64
}

#[test]
fn partitions_split_under_load_and_by_command_without_losing_a_key() {
    let mut cluster = Cluster::start_full(
        3,
        "t=3000",
        true,
        &[],
        &["--replicas", "3", "--split-keys", "150"],
    );
    assert_eq!(tiling(&partitions(&cluster), "t").len(), 3);

    // Load: transactions that GET two keys and PUT both, over 3,000 keys;
    // the partitions fill up and the manager splits them as they pass 150
    // keys, while the load runs.
    let history = tempfile::NamedTempFile::new().unwrap();
    let path = history.path().to_str().unwrap();
    let manager = cluster.manager_addr.to_string();
    let load = run(
        BENCHMARK,
        &[
            "load",
            "--connect-addr",
            &manager,
            "--workload",
            "txn",
            "--keys",
            "3000",
            "--clients",
            "8",
            "--duration-s",
            "8",
            "--json",
            "--progress-ms",
            "0",
            "--history",
            path,
        ],
        "",
    );
    assert!(load.status.success(), "{load:?}\n{}", cluster.logs());
    let report: Value = serde_json::from_str(load.stdout.trim()).unwrap();
    assert!(report["ok"].as_u64().unwrap() > 500, "{report}");
    let check = run(BENCHMARK, &["check", "--history", path], "");
    assert!(
        check.status.success() && check.stdout.starts_with("OK: "),
        "the history does not check: {}{}",
        check.stdout,
        check.stderr
    );

    // The splits happened, the map tiles the table, and every key is in
    // exactly one partition: the leaders' counts add up to a full scan.
    let keys = scan_count(&cluster, "t");
    assert!(keys > 1000, "the load wrote {keys} keys");
    // Once the manager is done: no partition past the threshold (else one
    // more split may land between the counts below).
    let deadline = Instant::now() + Duration::from_secs(30);
    let split = loop {
        let split = wait_counted(&cluster, "t", keys, Duration::from_secs(20));
        if split
            .iter()
            .all(|p| p["keys"].as_u64().is_some_and(|k| k <= 150))
        {
            break split;
        }
        assert!(
            Instant::now() < deadline,
            "the manager did not split every partition past 150 keys: {split:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        split.len() >= 6,
        "the manager split the partitions past 150 keys: {split:?}"
    );
    for p in &split {
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{p}");
    }

    // An operator's split at a chosen key: the new partition starts there,
    // and the keys on both sides still read back.
    let target = &split[0];
    let (id, start) = (
        target["id"].as_u64().unwrap(),
        target["start"].as_u64().unwrap(),
    );
    let end = target["end"].as_u64().unwrap();
    let at = start + (end - start) / 3;
    let before = cluster.run_benchmark(&[], &format!("GET t{at}\nGET t{start}\nSTOP\n"));
    let out = cluster.admin(&[
        "split",
        "--partition",
        &id.to_string(),
        "--at",
        &format!("t{at}"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "admin split: {}{}",
        out.stderr,
        cluster.logs()
    );
    let said: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(said["new_partition_start"].as_u64(), Some(at), "{said}");
    let after = cluster.run_benchmark(&[], &format!("GET t{at}\nGET t{start}\nSTOP\n"));
    assert_eq!(
        before, after,
        "the split moved keys, it did not change them"
    );
    let again = wait_counted(&cluster, "t", keys, Duration::from_secs(20));
    assert_eq!(again.len(), split.len() + 1);
    // A split outside the partition is refused with the reason.
    let out = cluster.admin(&["split", "--partition", &id.to_string(), "--at", "t0"]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not inside partition"),
        "{}",
        out.stderr
    );

    // Restarted, every server recovers its split partitions from its disk.
    cluster.restart_servers(&[0, 1, 2]);
    wait_counted(&cluster, "t", keys, Duration::from_secs(30));
    assert_eq!(scan_count(&cluster, "t"), keys);
}
