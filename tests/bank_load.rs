//! `benchmark load --workload bank` against a real 3-server cluster: CHECK
//! guarded transfers, reads of every balance, the report's bank counts, and
//! a history `benchmark check` accepts (README "benchmark").
mod common;

use common::{Cluster, BENCHMARK};

/// Runs a bank load of `clients` clients and `ops` commands over 30 accounts
/// of `customers` (spread over its 3 partitions), with a history; returns the
/// JSON report.
fn bank_load(cluster: &Cluster, clients: &str, ops: &str, history: &str) -> serde_json::Value {
    let manager = cluster.manager_addr.to_string();
    let args = [
        "load",
        "--connect-addr",
        &manager,
        "--workload",
        "bank",
        "--table",
        "customers",
        "--keys",
        "30",
        "--clients",
        clients,
        "--ops",
        ops,
        "--seed",
        "7",
        "--json",
        "--progress-ms",
        "0",
        "--history",
        history,
    ];
    let out = common::run(BENCHMARK, &args, "");
    assert!(
        out.status.success(),
        "load failed: {out:?}\n{}",
        cluster.logs()
    );
    let stdout = &out.stdout;
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// One client: no concurrency, so no CHECK fails, every read of all
/// balances sums to 30 x 100, and the history is serializable.
#[test]
fn a_lone_bank_client_keeps_the_total_and_its_history_checks() {
    let cluster = Cluster::start();
    let history = tempfile::NamedTempFile::new().unwrap();
    let path = history.path().to_str().unwrap();
    let report = bank_load(&cluster, "1", "300", path);
    let bank = &report["bank"];
    assert_eq!(report["config"]["workload"], "bank");
    assert_eq!(
        report["config"]["key_stride"], 33,
        "1000 keys / 30 accounts"
    );
    assert!(bank["transfers"].as_u64().unwrap() > 50, "{report}");
    assert!(bank["reads"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(bank["transfers_aborted"], 0, "{report}");
    assert_eq!(bank["violations"], 0, "{report}");
    assert_eq!(report["failed"], 0, "{report}");

    // The balances as a plain SCAN sees them: 30 x 100 in all (absent
    // accounts hold 100), every one of them at most that.
    let scan = cluster.run_benchmark(&[], "SCAN customers0 customers957\nSTOP\n");
    let mut present = 0u64;
    let mut sum = 0u64;
    for line in scan
        .lines()
        .filter(|l| !l.starts_with("SCAN") && *l != "STOP")
    {
        let (key, value) = line.split_once(' ').unwrap();
        let num: u64 = key.trim_start_matches("customers").parse().unwrap();
        assert_eq!(num % 33, 0, "only accounts were written: {line}");
        present += 1;
        sum += value.parse::<u64>().unwrap();
    }
    assert_eq!(sum + (30 - present) * 100, 3000, "{scan}");

    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(r#"["CHECK","customers"#), "{text}");
    let check = common::run(BENCHMARK, &["check", "--history", path], "");
    let stdout = &check.stdout;
    assert!(check.status.success(), "{stdout}");
    assert!(stdout.starts_with("OK: "), "{stdout}");
}

/// Several clients: transfers conflict, and a CHECK that fails aborts the
/// transfer, which is retried and counted. Transfers and reads span
/// partitions and are transactions: every read of all balances sums to the
/// total, the total is kept at the end, and the history checks.
#[test]
fn concurrent_bank_clients_abort_and_retry_on_failed_checks() {
    let cluster = Cluster::start();
    let history = tempfile::NamedTempFile::new().unwrap();
    let path = history.path().to_str().unwrap();
    let report = bank_load(&cluster, "8", "1500", path);
    let bank = &report["bank"];
    let count = |field: &str| bank[field].as_u64().unwrap_or_else(|| panic!("{report}"));
    assert!(count("transfers") > 100, "{report}");
    assert!(count("transfers_aborted") > 0, "{report}");
    assert!(count("reads") > 0, "{report}");
    assert_eq!(count("violations"), 0, "{report}");
    assert_eq!(report["unknown"], 0, "{report}");
    // The total at the end.
    let scan = cluster.run_benchmark(&[], "SCAN customers0 customers999\nSTOP\n");
    let (mut present, mut sum) = (0u64, 0u64);
    for line in scan
        .lines()
        .filter(|l| !l.starts_with("SCAN") && *l != "STOP")
    {
        let (_, value) = line.split_once(' ').unwrap();
        present += 1;
        sum += value.parse::<u64>().unwrap();
    }
    assert_eq!(sum + (30 - present) * 100, 3000, "{scan}");
    let check = common::run(BENCHMARK, &["check", "--history", path], "");
    assert!(check.status.success(), "{}", check.stdout);
    // Every CHECK-aborted transfer is a `fail` line of the history.
    let text = std::fs::read_to_string(path).unwrap();
    let failed_checks = text
        .lines()
        .filter(|l| l.contains(r#""status":"fail""#) && l.contains("CHECK"))
        .count() as u64;
    assert!(failed_checks >= count("transfers_aborted"), "{report}");
}
