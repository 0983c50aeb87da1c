//! Re-replication on real processes: 4 durable servers, 3 replicas per
//! partition, `--dead-after-ms 3000`. A server killed for good is declared
//! dead and every partition it held gets a new replica on the spare server
//! (learner, promoted once caught up, then the dead one removed), so a
//! second loss loses nothing and leaves nothing unavailable. The first
//! server, restarted on its old disk, drops the replicas its groups removed
//! and takes its share again. A server that joins a running cluster gets
//! its share of replicas and leaderships; a drained one gives all of them
//! away and is removed.
mod common;

use common::{run, Cluster, CLIENT};
use serde_json::Value;
use std::time::{Duration, Instant};

fn partitions(cluster: &Cluster) -> Vec<Value> {
    cluster.admin_json("partitions")
}

fn servers(cluster: &Cluster) -> Vec<Value> {
    cluster.admin_json("servers")
}

fn ids(v: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits until every partition has 3 voters, none on `gone`, no learner,
/// and a leader that all three report; returns how long it took.
fn wait_replaced(cluster: &Cluster, gone: &[u64], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let ps = partitions(cluster);
        let done = ps.iter().all(|p| {
            let voters = ids(&p["replicas"]);
            voters.len() == 3
                && !voters.iter().any(|v| gone.contains(v))
                && ids(&p["learners"]).is_empty()
                && p["leader"].is_u64()
                && ids(&p["reporting"]) == voters
        });
        if done {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "partitions not back to 3 live replicas (without {gone:?}) within {limit:?}: {ps:#?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn client(cluster: &Cluster, input: &str) -> String {
    let out = run(
        CLIENT,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        input,
    );
    assert!(out.status.success(), "client: {}", out.stderr);
    out.stdout
}

#[test]
fn a_lost_server_is_replaced_and_a_second_loss_loses_nothing() {
    let mut cluster = Cluster::start_full(
        4,
        "t=400",
        true,
        &[],
        &["--replicas", "3", "--dead-after-ms", "3000"],
    );
    // A key in every partition (4 partitions of 100 numbers).
    let keys: Vec<u64> = (0..40).map(|i| i * 10 + 3).collect();
    let puts: String = keys.iter().map(|k| format!("PUT t{k} v{k}\n")).collect();
    client(&cluster, &puts);
    let gets: String = keys.iter().map(|k| format!("GET t{k}\n")).collect();
    let expected: String = keys.iter().map(|k| format!("GET t{k} v{k}\n")).collect();

    // Every partition starts on 3 of the 4 servers; server 0 holds three.
    let before = partitions(&cluster);
    assert_eq!(before.len(), 4);
    cluster.kill_server(0);
    let took = wait_replaced(&cluster, &[0], Duration::from_secs(60));
    eprintln!("re-replicated server 0's replicas in {took:?} (dead after 3 s)");
    assert_eq!(client(&cluster, &gets), expected, "nothing lost");

    // A second loss: every partition still has 2 of its 3 replicas.
    cluster.kill_server(1);
    assert_eq!(
        client(&cluster, &gets),
        expected,
        "nothing lost or unavailable"
    );
    client(&cluster, "PUT t3 after\n");

    // Server 0 comes back on its old disk: the replicas its groups
    // removed are dropped (never served), and as the only spare it
    // replaces server 1's.
    cluster.restart_server(0);
    wait_replaced(&cluster, &[1], Duration::from_secs(60));
    let expected = expected.replace("GET t3 v3\n", "GET t3 after\n");
    assert_eq!(client(&cluster, &gets), expected);
    let logs = cluster.server_stderr(0);
    assert!(
        logs.contains("dropping a replica its group removed"),
        "server 0 dropped its removed replicas: {logs}"
    );
}

/// Polls `admin servers` until `done` holds (or panics after `limit`).
fn wait_servers(cluster: &Cluster, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) {
    let start = Instant::now();
    loop {
        let s = servers(cluster);
        if done(&s) {
            eprintln!("{what}: {:?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {s:#?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn count(s: &Value, field: &str) -> f64 {
    s[field].as_u64().unwrap() as f64
}

#[test]
fn a_joining_server_takes_its_share_and_a_drained_one_is_removed() {
    let mut cluster = Cluster::start_full(3, "t=300,u=300,v=300", false, &[], &["--replicas", "3"]);
    let keys: Vec<String> = ["t", "u", "v"]
        .iter()
        .flat_map(|t| (0..30).map(move |i| format!("{t}{}", i * 10 + 1)))
        .collect();
    let puts: String = keys.iter().map(|k| format!("PUT {k} x{k}\n")).collect();
    client(&cluster, &puts);
    let gets: String = keys.iter().map(|k| format!("GET {k}\n")).collect();
    let expected: String = keys.iter().map(|k| format!("GET {k} x{k}\n")).collect();

    // A fourth server joins: 9 partitions x 3 replicas over 4 servers, so
    // every server ends with 6 or 7 replicas and 2 or 3 leaderships.
    let joined = cluster.join_server();
    assert_eq!(joined, 3);
    wait_servers(
        &cluster,
        "the new server took its share",
        Duration::from_secs(60),
        |ss| {
            ss.len() == 4
                && ss.iter().all(|s| {
                    s["state"] == "up"
                        && (6.0..=7.0).contains(&count(s, "replicas"))
                        && (1.25..=3.25).contains(&count(s, "leaders"))
                })
        },
    );
    wait_replaced(&cluster, &[], Duration::from_secs(30));
    assert_eq!(
        client(&cluster, &gets),
        expected,
        "nothing lost by the moves"
    );

    // Removing a server that still holds replicas is refused.
    let out = cluster.admin(&["remove-server", "--node", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("still holds"), "{}", out.stderr);

    // Drain server 0: everything moves off it, nothing becomes unavailable.
    let out = cluster.admin(&["drain", "--node", "0"]);
    assert!(out.status.success(), "{}", out.stderr);
    wait_servers(
        &cluster,
        "server 0 drained",
        Duration::from_secs(60),
        |ss| {
            let s0 = ss.iter().find(|s| s["id"] == 0).unwrap();
            s0["state"] == "up"
                && s0["draining"] == true
                && count(s0, "replicas") == 0.0
                && count(s0, "leaders") == 0.0
        },
    );
    wait_replaced(&cluster, &[0], Duration::from_secs(30));
    assert_eq!(
        client(&cluster, &gets),
        expected,
        "nothing lost by the drain"
    );

    let out = cluster.admin(&["remove-server", "--node", "0"]);
    assert!(out.status.success(), "{}", out.stderr);
    cluster.kill_server(0);
    let ss = servers(&cluster);
    assert_eq!(
        ss.iter()
            .map(|s| s["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(client(&cluster, &gets), expected);
}

/// `admin move` by hand: a replica moves off a partition's leader to the
/// server without one (leadership handed over first), `admin moves` shows
/// it while it runs, and the data reads back; a move that makes no sense
/// is refused with the reason.
#[test]
fn an_operator_moves_one_replica_off_its_leader() {
    let cluster = Cluster::start_full(4, "t=400", false, &[], &["--replicas", "3"]);
    client(&cluster, "PUT t1 one\nPUT t399 last\n");
    let start = Instant::now();
    let p = loop {
        let found = partitions(&cluster)
            .into_iter()
            .find(|p| p["start"].as_u64() == Some(0) && p["leader"].is_u64());
        if let Some(p) = found {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no leader of t0's partition"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (id, leader) = (p["id"].as_u64().unwrap(), p["leader"].as_u64().unwrap());
    let to = (0..4).find(|n| !ids(&p["replicas"]).contains(n)).unwrap();
    let out = cluster.admin(&[
        "move",
        "--partition",
        &id.to_string(),
        "--from",
        &leader.to_string(),
        "--to",
        &to.to_string(),
    ]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("moving partition"), "{}", out.stdout);
    let moves = cluster.admin(&["moves", "--json"]);
    assert!(moves.status.success(), "{}", moves.stderr);
    // Refused: the same move again while it runs, or from a server
    // without a replica.
    let again = cluster.admin(&[
        "move",
        "--partition",
        &id.to_string(),
        "--from",
        "9",
        "--to",
        "1",
    ]);
    assert!(
        !again.status.success() && again.stderr.contains("no voting replica"),
        "{again:?}"
    );

    let start = Instant::now();
    loop {
        let p = partitions(&cluster)
            .into_iter()
            .find(|p| p["id"].as_u64() == Some(id))
            .unwrap();
        let voters = ids(&p["replicas"]);
        if voters.contains(&to) && !voters.contains(&leader) && ids(&p["learners"]).is_empty() {
            assert!(p["leader"].is_u64(), "{p}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the move did not finish: {p}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = client(&cluster, "GET t1\nGET t399\n");
    assert!(out.contains("one") && out.contains("last"), "{out}");
}
