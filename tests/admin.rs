//! `admin` against real processes: what the manager learns from the
//! servers' heartbeats (servers and their state, partitions and their
//! leaders), leadership transfer, and clear errors. The test cluster's
//! servers heartbeat every 200 ms, so the manager's view settles quickly.
mod common;

use common::{run, Cluster, ADMIN};
use serde_json::Value;
use std::time::{Duration, Instant};

fn admin(cluster: &Cluster, args: &[&str]) -> common::Output {
    let addr = cluster.manager_addr.to_string();
    let mut all = vec!["--connect-addr", &addr, "--timeout-ms", "10000"];
    all.extend_from_slice(args);
    run(ADMIN, &all, "")
}

fn admin_json(cluster: &Cluster, what: &str) -> Vec<Value> {
    let out = admin(cluster, &[what, "--json"]);
    assert!(out.status.success(), "admin {what}: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Polls `admin partitions` until `done` holds for them (or panics after
/// 15 s with the last answer).
fn wait_partitions(cluster: &Cluster, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let partitions = admin_json(cluster, "partitions");
        if done(&partitions) {
            return partitions;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s; last: {partitions:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has_leader(p: &Value) -> bool {
    p["leader"].is_u64()
}

#[test]
fn admin_shows_servers_partitions_and_moves_a_leader() {
    let mut cluster = Cluster::start_full(
        3,
        "t=300,u=30",
        false,
        &[],
        &["--replicas", "3", "--dead-after-ms", "5000"],
    );

    // Every server is up and holds every partition (3 replicas on 3).
    let servers = admin_json(&cluster, "servers");
    assert_eq!(servers.len(), 3);
    for s in &servers {
        assert_eq!(s["state"], "up", "{s}");
        assert_eq!(s["replicas"], 6, "{s}");
    }
    // Every partition reports a leader, from all three replicas.
    let partitions = wait_partitions(&cluster, "a leader everywhere", |ps| {
        ps.iter()
            .all(|p| has_leader(p) && p["reporting"].as_array().unwrap().len() == 3)
    });
    assert_eq!(partitions.len(), 6);
    let t0 = &partitions[0];
    assert_eq!(
        (t0["table"].as_str(), t0["start"].as_u64()),
        (Some("t"), Some(0))
    );

    // Writes show in the applied index and the key count.
    let applied_before = t0["applied"].as_u64().unwrap();
    let out = run(
        common::CLIENT,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        "PUT t1 a\nPUT t2 b\n",
    );
    assert!(out.status.success(), "{}", out.stderr);
    wait_partitions(&cluster, "the writes counted", |ps| {
        ps[0]["keys"] == 2 && ps[0]["applied"].as_u64().unwrap() >= applied_before + 2
    });

    // Move partition 0's leadership to another replica.
    let leader = t0["leader"].as_u64().unwrap();
    let to = (leader + 1) % 3;
    let out = admin(
        &cluster,
        &[
            "transfer-leader",
            "--partition",
            "0",
            "--to",
            &to.to_string(),
        ],
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("server {to} now leads partition 0")),
        "{}",
        out.stdout
    );
    // (The manager may hand it on later to even out leader counts.)
    // The data is still there.
    let out = run(
        common::CLIENT,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        "GET t1\n",
    );
    assert_eq!(out.stdout.trim_end(), "GET t1 a", "{}", out.stderr);

    // Clear errors, exit status 1.
    for (args, says) in [
        (
            vec!["transfer-leader", "--partition", "99", "--to", "0"],
            "there is no partition 99",
        ),
        (
            vec!["transfer-leader", "--partition", "0", "--to", "7"],
            "server 7 holds no replica of partition 0",
        ),
    ] {
        let out = admin(&cluster, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }

    // A killed server turns unreachable (3 s), then dead (--dead-after,
    // 5 s here); its partitions get new leaders.
    cluster.kill_server(to as usize);
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let servers = admin_json(&cluster, "servers");
        let gone = servers.iter().find(|s| s["id"] == to).unwrap().clone();
        let state = gone["state"].as_str().unwrap().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "dead" {
            assert_eq!(gone["leaders"], 0);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server {to} still {gone} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen,
        ["up", "unreachable", "dead"],
        "states of the killed server"
    );
    wait_partitions(&cluster, "new leaders", |ps| {
        ps.iter().all(|p| has_leader(p) && p["leader"] != to)
    });
}

#[test]
fn admin_without_a_manager_fails_clearly() {
    let port = common::free_ports(1)[0].to_string();
    let out = run(
        ADMIN,
        &["--connect-addr", &port, "--timeout-ms", "500", "servers"],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("error:"), "{}", out.stderr);
}
