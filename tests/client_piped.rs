//! `client` with stdin piped (not a terminal): no prompts or banners, only
//! replies (docs/protocol.md, "client").
mod common;

use common::Cluster;

#[test]
fn cmd_op_done_prints_replies_in_order_then_committed() {
    let cluster = Cluster::start();
    let input = "\
cmd
op PUT orders5 o
op GET orders5
op PUT customers1 alice
op SWAP orders5 p
op SCAN orders0 orders99
op DELETE customers1
op GET customers1
done
GET orders5
exit
";
    let expected = "\
PUT orders5 not_found
GET orders5 o
PUT customers1 not_found
SWAP orders5 o
SCAN orders0 orders99 BEGIN
orders5 p
SCAN END
DELETE customers1 found
GET customers1 null
COMMITTED
GET orders5 p
";
    assert_eq!(cluster.run_client(input), expected);
}

#[test]
fn bare_operations_print_only_their_reply() {
    let cluster = Cluster::start();
    let input = "\
PUT customers007 alice
GET customers7
SWAP customers8 x
GET customers8
DELETE customers7
SCAN customers0 customers100
";
    let expected = "\
PUT customers7 not_found
GET customers7 alice
SWAP customers8 null
GET customers8 null
DELETE customers7 found
SCAN customers0 customers100 BEGIN
SCAN END
";
    // End of input (no `exit`) also ends the client cleanly.
    assert_eq!(cluster.run_client(input), expected);
}

#[test]
fn time_toggles_latency_lines() {
    let cluster = Cluster::start();
    let input = "\
GET orders1
time
GET orders1
cmd
op GET orders1
op GET orders2
done
time
GET orders1
";
    let got = cluster.run_client(input);
    let lines: Vec<&str> = got.lines().collect();
    let is_latency = |line: &str| {
        line.strip_prefix('(')
            .and_then(|l| l.strip_suffix(" ms)"))
            .is_some_and(|ms| ms.parse::<f64>().is_ok_and(|ms| ms >= 0.0))
    };
    assert_eq!(lines.len(), 10, "unexpected output:\n{got}");
    assert_eq!(lines[0], "GET orders1 null");
    assert!(lines[1].starts_with("timing") && lines[1].contains("on"));
    assert_eq!(lines[2], "GET orders1 null");
    assert!(is_latency(lines[3]), "latency line: {:?}", lines[3]);
    assert_eq!(lines[4], "GET orders1 null");
    assert_eq!(lines[5], "GET orders2 null");
    assert_eq!(lines[6], "COMMITTED");
    assert!(is_latency(lines[7]), "latency line: {:?}", lines[7]);
    assert!(lines[8].starts_with("timing") && lines[8].contains("off"));
    assert_eq!(lines[9], "GET orders1 null");
}

#[test]
fn an_op_on_an_unknown_table_errors_at_once_and_is_not_added() {
    let cluster = Cluster::start();
    let input = "\
cmd
op PUT orders1 a
op GET nosuchtable1
op FROB orders1
op GET orders1
done
";
    let got = cluster.run_client(input);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 5, "unexpected output:\n{got}");
    // The errors come when the ops are added, before `done` runs anything.
    assert!(
        lines[0].starts_with("ERROR ") && lines[0].contains("unknown table"),
        "{:?}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("ERROR ") && lines[1].contains("unknown operation"),
        "{:?}",
        lines[1]
    );
    assert_eq!(
        &lines[2..],
        ["PUT orders1 not_found", "GET orders1 a", "COMMITTED"]
    );
}

#[test]
fn exit_ends_the_client_and_later_lines_are_not_run() {
    let cluster = Cluster::start();
    assert_eq!(
        cluster.run_client("PUT orders3 a\nexit\nPUT orders3 b\n"),
        "PUT orders3 not_found\n"
    );
    assert_eq!(
        cluster.run_client("GET orders3\nquit\nGET orders3\n"),
        "GET orders3 a\n"
    );
    // Bad input outside a command is one ERROR line; the client goes on.
    let got = cluster.run_client("GET nosuchtable1\nGET orders3\n");
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(lines[0].starts_with("ERROR ") && lines[0].contains("unknown table"));
    assert_eq!(lines[1], "GET orders3 a");
}
