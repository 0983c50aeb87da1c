//! Process failures: a server killed with kill -9 and restarted, and the
//! manager killed while clients keep working.
mod common;

use common::Cluster;

/// The reply line is an error of one of the `allowed` kinds.
fn assert_error(line: &str, allowed: &[&str]) {
    assert!(
        allowed
            .iter()
            .any(|kind| line.starts_with(&format!("ERROR {kind}: "))),
        "expected ERROR {allowed:?}, got {line:?}"
    );
}

#[test]
fn a_killed_server_is_unavailable_then_serves_again_after_restart() {
    let mut cluster = Cluster::start();
    // customers=1000 on 3 servers: server 1 holds [333, 666); orders=100:
    // server 1 holds [33, 66).
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
    // Its partitions cannot answer within the deadline; the others can.
    let input = "\
GET customers400
PUT customers401 x
GET customers1
GET customers700
SCAN customers0 customers332
SCAN customers0 customers999
GET orders70
STOP
";
    let got = cluster.run_benchmark(&["--timeout-ms", "1500"], input);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 10, "one reply per request:\n{got}");
    assert_error(lines[0], &["unavailable"]);
    // A write whose server did not answer: unavailable or unknown outcome,
    // never a reply that pretends it worked.
    assert_error(lines[1], &["unavailable", "unknown outcome"]);
    assert_eq!(lines[2], "GET customers1 a");
    assert_eq!(lines[3], "GET customers700 c");
    assert_eq!(
        &lines[4..7],
        [
            "SCAN customers0 customers332 BEGIN",
            "customers1 a",
            "SCAN END"
        ]
    );
    // A SCAN that needs the dead server's partition fails as a whole.
    assert_error(lines[7], &["unavailable"]);
    assert_eq!(lines[8], "GET orders70 e");
    assert_eq!(lines[9], "STOP");

    cluster.restart_server(1);
    // No persistence yet: server 1's partitions come back empty (so the
    // write with an unknown outcome is gone too); the others kept their data.
    let input = "\
GET customers400
GET customers401
GET orders40
GET customers1
GET customers700
GET orders70
PUT customers400 z
GET customers400
SCAN customers0 customers999
STOP
";
    let expected = "\
GET customers400 null
GET customers401 null
GET orders40 null
GET customers1 a
GET customers700 c
GET orders70 e
PUT customers400 not_found
GET customers400 z
SCAN customers0 customers999 BEGIN
customers1 a
customers400 z
customers700 c
SCAN END
STOP
";
    assert_eq!(cluster.run_benchmark(&[], input), expected);
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
