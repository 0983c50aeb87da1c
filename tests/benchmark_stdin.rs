//! `benchmark` stdin mode against a real 3-server cluster: every reply
//! format of docs/protocol.md "Operations and replies", byte for byte, and the one-line
//! `ERROR` replies to bad input.
mod common;

use common::Cluster;

/// Runs `input` through one benchmark and compares the whole stdout.
fn check(cluster: &Cluster, args: &[&str], input: &str, expected: &str) {
    let got = cluster.run_benchmark(args, input);
    assert_eq!(
        got, expected,
        "\n--- input\n{input}--- got\n{got}--- expected\n{expected}"
    );
}

#[test]
fn every_reply_format_byte_for_byte() {
    let cluster = Cluster::start();
    // customers=1000 over 3 servers: [0,333) [333,666) [666,inf).
    let input = "\
PUT customers1 alice
PUT customers1 bob
GET customers1
GET customers2
SWAP customers1 carol
GET customers1
SWAP customers3 x
GET customers3
DELETE customers1
DELETE customers1
GET customers1
PUT customers007 seven
GET customers7
PUT customers10 ten
PUT customers2 two
SCAN customers0 customers10
SCAN customers2 customers9
SCAN customers3 customers6
SCAN customers10 customers2
PUT customers5000000 big
GET customers0005000000
PUT customers400 mid
PUT customers999 last
SCAN customers0 customers18446744073709551615
put orders5 lower_case_op
GET orders05
STOP
";
    let expected = "\
PUT customers1 not_found
PUT customers1 found
GET customers1 bob
GET customers2 null
SWAP customers1 bob
GET customers1 carol
SWAP customers3 null
GET customers3 null
DELETE customers1 found
DELETE customers1 not_found
GET customers1 null
PUT customers7 not_found
GET customers7 seven
PUT customers10 not_found
PUT customers2 not_found
SCAN customers0 customers10 BEGIN
customers2 two
customers7 seven
customers10 ten
SCAN END
SCAN customers2 customers9 BEGIN
customers2 two
customers7 seven
SCAN END
SCAN customers3 customers6 BEGIN
SCAN END
SCAN customers10 customers2 BEGIN
SCAN END
PUT customers5000000 not_found
GET customers5000000 big
PUT customers400 not_found
PUT customers999 not_found
SCAN customers0 customers18446744073709551615 BEGIN
customers2 two
customers7 seven
customers10 ten
customers400 mid
customers999 last
customers5000000 big
SCAN END
PUT orders5 not_found
GET orders5 lower_case_op
STOP
";
    check(&cluster, &[], input, expected);

    // The data outlives the benchmark process; --key-len pads every key in
    // replies, SCAN rows included, and never truncates longer numbers.
    let input = "\
GET customers7
PUT customers3 three
SCAN customers0 customers10
GET customers5000000
STOP
";
    let expected = "\
GET customers0007 seven
PUT customers0003 not_found
SCAN customers0000 customers0010 BEGIN
customers0002 two
customers0003 three
customers0007 seven
customers0010 ten
SCAN END
GET customers5000000 big
STOP
";
    check(&cluster, &["--key-len", "4"], input, expected);
}

#[test]
fn stop_ends_the_program_and_later_lines_are_not_run() {
    let cluster = Cluster::start();
    let out = common::run(
        common::BENCHMARK,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        "PUT orders1 a\nSTOP\nPUT orders1 b\nGET orders1\n",
    );
    assert!(out.status.success(), "exit status {}", out.status);
    assert_eq!(out.stdout, "PUT orders1 not_found\nSTOP\n");
    // The line after STOP was not executed.
    check(
        &cluster,
        &[],
        "GET orders1\nSTOP\n",
        "GET orders1 a\nSTOP\n",
    );
    // End of input without STOP also ends the program cleanly, and blank
    // lines get no reply.
    check(&cluster, &[], "\nGET orders1\n\n", "GET orders1 a\n");
}

#[test]
fn bad_input_gets_one_error_line_and_the_program_goes_on() {
    let cluster = Cluster::start();
    let big = "v".repeat(64 * 1024 + 1);
    let max = "w".repeat(64 * 1024);
    let input = format!(
        "\
FROB customers1
PUT customers1 a
GET
GET customers1 customers2
PUT customers1
DELETE
SCAN customers1
GET 12
GET customers
GET cust-1
GET customers18446744073709551616
GET nosuchtable1
SCAN customers1 orders2
PUT customers1 {big}
GET customers1
PUT customers2 {max}
DELETE customers2
SWAP customers1 b
STOP
"
    );
    let got = cluster.run_benchmark(&[], &input);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 19, "one line per request:\n{got}");
    let error = |i: usize, reason: &str| {
        assert!(
            lines[i].starts_with("ERROR ") && lines[i].contains(reason),
            "line {i}: expected an ERROR containing {reason:?}, got {:?}",
            lines[i]
        );
    };
    error(0, "unknown operation");
    assert_eq!(lines[1], "PUT customers1 not_found");
    error(2, "wrong number of arguments");
    error(3, "wrong number of arguments");
    error(4, "wrong number of arguments");
    error(5, "wrong number of arguments");
    error(6, "wrong number of arguments");
    error(7, "malformed key");
    error(8, "malformed key");
    error(9, "malformed key");
    error(10, "malformed key");
    error(11, "unknown table");
    error(12, "SCAN across tables");
    error(13, "too large");
    // The oversized PUT wrote nothing.
    assert_eq!(lines[14], "GET customers1 a");
    // Exactly 64 KiB is allowed.
    assert_eq!(lines[15], "PUT customers2 not_found");
    assert_eq!(lines[16], "DELETE customers2 found");
    assert_eq!(lines[17], "SWAP customers1 a");
    assert_eq!(lines[18], "STOP");
}

/// CHECK in stdin mode: exactly one reply line per request, `ok` or the
/// mismatch with the actual value (`null` if absent), and no ABORTED line.
#[test]
fn check_replies_ok_or_mismatch_with_the_actual_value() {
    let cluster = Cluster::start();
    let input = "\
CHECK customers1 null
CHECK customers1 alice
PUT customers1 alice
CHECK customers001 alice
CHECK customers1 bob
CHECK customers1 null
check orders5 null
CHECK customers1
CHECK nope1 x
STOP
";
    let expected = "\
CHECK customers1 ok
CHECK customers1 mismatch null
PUT customers1 not_found
CHECK customers1 ok
CHECK customers1 mismatch alice
CHECK customers1 mismatch alice
CHECK orders5 ok
ERROR wrong number of arguments for CHECK: expected 2, got 1
ERROR unknown table 'nope'
STOP
";
    check(&cluster, &[], input, expected);
    check(
        &cluster,
        &["--key-len", "3"],
        "CHECK customers1 x\nCHECK customers1 alice\n",
        "CHECK customers001 mismatch alice\nCHECK customers001 ok\n",
    );
}
