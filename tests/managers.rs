//! A replicated control plane on real processes (issue 11, item 2): three
//! managers (`--peers`, each with its control log in a `--data-dir`) and four durable servers with
//! `--replicas 3`. The leading manager is killed: another takes over, and
//! clients, servers and `admin` (given every manager's address) go on. A
//! drain asked of the new leader moves every replica off the server; then
//! every manager is restarted at once, and the drain is still there (it is
//! in the control group's log, not in a manager's memory), so the server
//! can be removed, and the removed server's process is refused.
mod common;

use common::Cluster;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The manager that leads, as `admin managers --json` says, waiting up to
/// `limit` for one.
fn leader(cluster: &Cluster, limit: Duration) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        let out = cluster.admin(&["managers", "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
            assert_eq!(v["peers"].as_array().map(Vec::len), Some(3), "{v}");
            if let Some(id) = v["leader"].as_u64() {
                return (id as usize, start.elapsed());
            }
        }
        assert!(
            start.elapsed() < limit,
            "no manager leads within {limit:?}: {}\n{}",
            out.stderr,
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn server(cluster: &Cluster, id: u64) -> Value {
    cluster
        .admin_json("servers")
        .into_iter()
        .find(|s| s["id"].as_u64() == Some(id))
        .unwrap_or_else(|| panic!("no server {id} in `admin servers`"))
}

#[test]
fn the_control_plane_survives_its_leader_and_a_restart_of_every_manager() {
    let mut cluster =
        Cluster::start_managers(4, 3, true, &["--replicas", "3", "--dead-after-ms", "3000"]);
    let keys: Vec<String> = (0..40).map(|i| format!("customers{}", i * 25)).collect();
    let puts: String = keys.iter().map(|k| format!("PUT {k} v{k}\n")).collect();
    cluster.run_benchmark(&[], &puts);

    let (first, took) = leader(&cluster, Duration::from_secs(20));
    eprintln!("manager {first} leads ({took:?} after start)");
    cluster.kill_manager_i(first);
    let (second, took) = leader(&cluster, Duration::from_secs(30));
    assert_ne!(second, first, "a killed manager cannot lead");
    eprintln!("manager {second} took over {took:?} after manager {first} was killed");

    // Clients and admin go on through the survivors.
    let gets: String = keys.iter().map(|k| format!("GET {k}\n")).collect();
    let out = cluster.run_benchmark(&[], &gets);
    for k in &keys {
        assert!(out.contains(&format!("GET {k} v{k}")), "{k} lost: {out}");
    }
    let out = cluster.admin(&["drain", "--node", "3"]);
    assert!(out.status.success(), "drain: {} {}", out.stdout, out.stderr);
    let start = Instant::now();
    while server(&cluster, 3)["replicas"].as_u64() != Some(0) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "server 3 still holds replicas: {:?}\n{}",
            server(&cluster, 3),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("server 3 drained in {:?}", start.elapsed());

    // Every manager at once (the killed one comes back too): the drain is
    // remembered.
    cluster.kill_manager();
    cluster.start_all();
    leader(&cluster, Duration::from_secs(30));
    assert_eq!(
        server(&cluster, 3)["draining"].as_bool(),
        Some(true),
        "the drain was forgotten by a restart of every manager"
    );
    let out = cluster.admin(&["remove-server", "--node", "3"]);
    assert!(
        out.status.success(),
        "remove: {} {}",
        out.stdout,
        out.stderr
    );
    let status = cluster.wait_server_exit(3, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the removed server still runs: {status:?}"
    );
    assert!(
        cluster
            .server_stderr(3)
            .contains("was removed from the cluster"),
        "{}",
        cluster.server_stderr(3)
    );
    let out = cluster.run_benchmark(&[], &gets);
    for k in &keys {
        assert!(out.contains(&format!("GET {k} v{k}")), "{k} lost: {out}");
    }
}
