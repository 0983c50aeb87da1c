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

/// CHECK guards a command: a failed one prints its mismatch reply and
/// `ABORTED check failed: op N` (numbered from 1, like `ABORTED op N`), and
/// nothing of the command is applied; a CHECK sees the earlier operations of
/// its command; a bare CHECK prints only its reply. When CHECKs fail in
/// several partitions, the first in operation order is reported.
#[test]
fn a_failed_check_aborts_the_whole_command() {
    let cluster = Cluster::start();
    let input = "\
PUT customers1 alice
cmd
op PUT customers5 o
op CHECK customers1 bob
op PUT customers1 carol
done
GET customers5
GET customers1
cmd
op CHECK customers1 alice
op CHECK customers2 null
op PUT customers2 x
op CHECK customers2 x
op SWAP customers1 bob
done
CHECK customers1 bob
CHECK customers3 bob
cmd
op CHECK customers9 null
op PUT customers9 v
op CHECK customers9 w
done
GET customers9
cmd
op GET orders5
op CHECK customers1 alice
done
cmd
op CHECK customers1 zzz
op CHECK orders5 zzz
done
cmd
op CHECK orders5 zzz
op CHECK customers1 zzz
done
";
    let expected = "\
PUT customers1 not_found
CHECK customers1 mismatch alice
ABORTED check failed: op 2
GET customers5 null
GET customers1 alice
CHECK customers1 ok
CHECK customers2 ok
PUT customers2 not_found
CHECK customers2 ok
SWAP customers1 alice
COMMITTED
CHECK customers1 ok
CHECK customers3 mismatch null
CHECK customers9 mismatch v
ABORTED check failed: op 3
GET customers9 null
CHECK customers1 mismatch bob
ABORTED check failed: op 2
CHECK customers1 mismatch bob
ABORTED check failed: op 1
CHECK orders5 mismatch null
ABORTED check failed: op 1
";
    assert_eq!(cluster.run_client(input), expected);
    // Across partitions too: the CHECK fails in one partition, and the
    // PUT in the other is not applied (one transaction).
    let input = "\
cmd
op PUT orders5 o
op CHECK customers1 alice
done
GET orders5
";
    let expected = "\
CHECK customers1 mismatch bob
ABORTED check failed: op 2
GET orders5 null
";
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
