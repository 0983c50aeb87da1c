//! Process failures: a server killed with kill -9 and restarted, and the
//! manager killed while clients keep working.
mod common;

use common::Cluster;
use std::time::{Duration, Instant};

/// The reply line is an error of one of the `allowed` kinds.
fn assert_error(line: &str, allowed: &[&str]) {
    assert!(
        allowed
            .iter()
            .any(|kind| line.starts_with(&format!("ERROR {kind}: "))),
        "expected ERROR {allowed:?}, got {line:?}"
    );
}

/// Every partition has 3 replicas (the default) on the 3 servers, in memory.
/// One server killed: a minority of every partition, so everything is still
/// served, with no data lost. It restarts empty and catches up from the
/// leaders. Two servers killed: no partition has a majority, so every request
/// fails within its deadline, honestly (`unavailable`, or `unknown outcome`
/// for a write that reached a server); once they restart the cluster serves
/// again.
#[test]
fn a_killed_minority_is_survived_a_killed_majority_is_unavailable() {
    let mut cluster = Cluster::start();
    // customers=1000 on 3 servers: partitions [0, 333), [333, 666),
    // [666, ...); orders=100: [0, 33), [33, 66), [66, ...).
    let input = "\
PUT customers1 a
PUT customers400 b
PUT customers700 c
PUT orders40 d
PUT orders70 e
STOP
";
    let expected = "\
PUT customers1 not_found
PUT customers400 not_found
PUT customers700 not_found
PUT orders40 not_found
PUT orders70 not_found
STOP
";
    assert_eq!(cluster.run_benchmark(&[], input), expected);

    cluster.kill_server(1);
    // Each partition still has 2 of its 3 replicas: after a re-election
    // (if server 1 led it) everything answers within the default deadline,
    // with every acknowledged write.
    let input = "\
GET customers400
PUT customers401 x
GET customers1
GET customers700
SCAN customers0 customers332
SCAN customers0 customers999
GET orders40
PUT orders41 y
GET orders70
STOP
";
    let expected = "\
GET customers400 b
PUT customers401 not_found
GET customers1 a
GET customers700 c
SCAN customers0 customers332 BEGIN
customers1 a
SCAN END
SCAN customers0 customers999 BEGIN
customers1 a
customers400 b
customers401 x
customers700 c
SCAN END
GET orders40 d
PUT orders41 not_found
GET orders70 e
STOP
";
    assert_eq!(cluster.run_benchmark(&[], input), expected);

    cluster.restart_server(1);
    // Server 1 came back empty (no --persistence); nothing was lost, and
    // the cluster goes on. (An idle partition repairing a follower that
    // restarted empty is `replication::idle_partition_repairs_a_follower_restarted_empty`.)
    let input = "\
GET customers400
GET customers401
GET orders40
GET orders41
GET customers1
GET customers700
GET orders70
PUT customers400 z
GET customers400
PUT customers1 a
PUT customers700 c
PUT orders1 f
PUT orders40 d
PUT orders70 e
SCAN customers0 customers999
STOP
";
    let expected = "\
GET customers400 b
GET customers401 x
GET orders40 d
GET orders41 y
GET customers1 a
GET customers700 c
GET orders70 e
PUT customers400 found
GET customers400 z
PUT customers1 found
PUT customers700 found
PUT orders1 not_found
PUT orders40 found
PUT orders70 found
SCAN customers0 customers999 BEGIN
customers1 a
customers400 z
customers401 x
customers700 c
SCAN END
STOP
";
    assert_eq!(cluster.run_benchmark(&[], input), expected);

    // Give server 1 time to be caught up by every leader (heartbeats every
    // 100 ms) before it becomes necessary for a majority.
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill_server(2);
    // Servers 0 and 1 (the one restarted empty) hold a majority: every
    // acknowledged write is there.
    let input = "\
SCAN customers0 customers999
SCAN orders0 orders99
PUT customers2 w
GET customers2
STOP
";
    let expected = "\
SCAN customers0 customers999 BEGIN
customers1 a
customers400 z
customers401 x
customers700 c
SCAN END
SCAN orders0 orders99 BEGIN
orders1 f
orders40 d
orders41 y
orders70 e
SCAN END
PUT customers2 not_found
GET customers2 w
STOP
";
    assert_eq!(cluster.run_benchmark(&[], input), expected);

    // Servers 1 and 2 down: server 0 alone is a minority of every
    // partition. Every request fails within the deadline instead of
    // hanging or answering from a stale copy.
    cluster.kill_server(1);
    let input = "\
GET customers400
PUT customers401 q
GET customers1
SCAN customers0 customers999
GET orders70
PUT orders1 q
STOP
";
    let started = Instant::now();
    let got = cluster.run_benchmark(&["--timeout-ms", "1500"], input);
    let elapsed = started.elapsed();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 7, "one reply per request:\n{got}");
    for (i, line) in lines[..6].iter().enumerate() {
        if input.lines().nth(i).unwrap().starts_with("PUT") {
            // A write sent to a leader that could not commit it: its
            // outcome is unknown (it may commit once a majority is back).
            assert_error(line, &["unavailable", "unknown outcome"]);
        } else {
            assert_error(line, &["unavailable"]);
        }
    }
    assert_eq!(lines[6], "STOP");
    assert!(
        elapsed < Duration::from_secs(6 * 2 + 5),
        "6 requests with a 1.5 s deadline took {elapsed:?}"
    );

    // Both back (empty: a majority of in-memory replicas crashed, so the
    // data may be lost): the cluster elects leaders and serves again.
    cluster.start_all();
    let out = cluster.run_benchmark(&[], "PUT customers400 n\nGET customers400\nSTOP\n");
    assert!(
        out.ends_with("GET customers400 n\nSTOP\n") && !out.contains("ERROR"),
        "{out}"
    );
    cluster.assert_all_running();
}

#[test]
fn clients_keep_working_while_the_manager_is_down() {
    let mut cluster = Cluster::start();
    let mut client = cluster.spawn_client(&[]);
    client.send("PUT customers1 a\nPUT customers500 b\nPUT orders99 c\n");
    assert_eq!(
        client.lines(3),
        "PUT customers1 not_found\nPUT customers500 not_found\nPUT orders99 not_found\n"
    );

    cluster.kill_manager();
    // The client has the map: reads, writes, multi-partition commands and
    // scans over every server still work.
    client.send(
        "\
GET customers1
PUT customers900 d
cmd
op SWAP customers1 a2
op GET customers500
op DELETE orders99
done
SCAN customers0 customers1000
",
    );
    let expected = "\
GET customers1 a
PUT customers900 not_found
SWAP customers1 a
GET customers500 b
DELETE orders99 found
COMMITTED
SCAN customers0 customers1000 BEGIN
customers1 a2
customers500 b
customers900 d
SCAN END
";
    assert_eq!(client.lines(expected.lines().count()), expected);

    // A new client cannot get a map while the manager is down: it says so.
    let out = common::run(
        common::BENCHMARK,
        &[
            "--connect-addr",
            &cluster.manager_addr.to_string(),
            "--timeout-ms",
            "500",
        ],
        "GET customers1\n",
    );
    assert!(!out.status.success(), "no manager: {out:?}");
    assert!(out.stdout.is_empty(), "no replies without a map: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // A restarted manager recovers the map; new clients see the data written
    // while it was down, and the old client goes on.
    cluster.restart_manager();
    let expected = "\
GET customers1 a2
GET customers900 d
GET orders99 null
STOP
";
    assert_eq!(
        cluster.run_benchmark(
            &[],
            "GET customers1\nGET customers900\nGET orders99\nSTOP\n"
        ),
        expected
    );
    client.send("GET customers500\nexit\n");
    assert_eq!(client.line(), "GET customers500 b");
    let (status, rest, stderr) = client.finish();
    assert!(status.success(), "client exit: {status}\n{stderr}");
    assert_eq!(rest, "");
    cluster.assert_all_running();
}
