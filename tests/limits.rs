//! Limits and odd input on the text interfaces. Several tests are
//! regressions for bugs this suite found (see each one).
mod common;

use common::Cluster;
use std::time::{Duration, Instant};

#[test]
fn extreme_key_numbers_and_padding() {
    let cluster = Cluster::start();
    let max = u64::MAX;
    let input = format!(
        "\
PUT customers{max} top
PUT customers0 bottom
GET customers{max}
SCAN customers{max} customers{max}
SCAN customers0 customers{max}
STOP
"
    );
    let expected = format!(
        "\
PUT customers{max} not_found
PUT customers0 not_found
GET customers{max} top
SCAN customers{max} customers{max} BEGIN
customers{max} top
SCAN END
SCAN customers0 customers{max} BEGIN
customers0 bottom
customers{max} top
SCAN END
STOP
"
    );
    assert_eq!(cluster.run_benchmark(&[], &input), expected);
    // --key-len 20 pads to u64::MAX's width; CRLF line ends are accepted.
    assert_eq!(
        cluster.run_benchmark(&["--key-len", "20"], "GET customers0\r\nSTOP\r\n"),
        "GET customers00000000000000000000 bottom\nSTOP\n"
    );
}

#[test]
fn a_command_with_too_many_operations_is_refused() {
    let cluster = Cluster::start();
    let mut input = String::from("cmd\n");
    for i in 0..=distkv::op::OPS_PER_COMMAND_MAX {
        input.push_str(&format!("op GET orders{i}\n"));
    }
    input.push_str("done\nPUT orders1 a\n");
    let got = cluster.run_client(&input);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(
        lines[0].starts_with("ABORTED") && lines[0].contains("too many operations"),
        "{:?}",
        lines[0]
    );
    assert_eq!(lines[1], "PUT orders1 not_found");
}

/// Regression (found by this suite, fixed): `benchmark` (and `client`) read stdin with `BufRead::lines`, which
/// fails on a line that is not UTF-8; the loop then `break`s, so the program
/// exits 0 without a reply to that request or any later one.
#[test]

fn a_non_utf8_line_gets_one_error_and_the_program_goes_on() {
    let cluster = Cluster::start();
    let got = cluster.run_benchmark(&[], "PUT customers1 a\u{fffd}\nGET customers2\nSTOP\n");
    assert_eq!(got, "PUT customers1 not_found\nGET customers2 null\nSTOP\n");
    // The same line with a raw 0xff byte instead of U+FFFD.
    let out = common::run_bytes(
        common::BENCHMARK,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        b"PUT customers3 a\xff\nGET customers2\nSTOP\n",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one reply per request: {out:?}");
    assert!(lines[0].starts_with("ERROR ") || lines[0] == "PUT customers3 not_found");
    assert_eq!(&lines[1..], ["GET customers2 null", "STOP"]);
}

/// Regression (found by this suite, fixed): a SCAN whose rows exceed the 16 MiB frame limit gets no reply at all
/// (the server logs "cannot encode reply"); the client waits out its whole
/// deadline and prints `ERROR unavailable: no reply from server ...`,
/// instead of a prompt error that names the limit.
#[test]

fn a_scan_result_over_the_reply_limit_is_a_prompt_error() {
    let cluster = Cluster::start();
    let value = "x".repeat(64 * 1024);
    // orders=100 over 3 servers: orders66 and up are on one server.
    let mut input = String::new();
    for i in 0..270 {
        input.push_str(&format!("PUT orders{} {value}\n", 100 + i));
    }
    input.push_str("STOP\n");
    cluster.run_benchmark(&[], &input);
    let started = Instant::now();
    let got = cluster.run_benchmark(
        &["--timeout-ms", "5000"],
        "SCAN orders100 orders369\nGET orders100\nSTOP\n",
    );
    let lines: Vec<&str> = got.lines().collect();
    assert!(
        lines[0].starts_with("ERROR "),
        "{:?}",
        lines[0].chars().take(80).collect::<String>()
    );
    assert!(
        !lines[0].contains("unavailable") && !lines[0].contains("unknown outcome"),
        "{:?}",
        lines[0]
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

/// Regression (found by this suite, fixed): a command whose encoded request exceeds the 16 MiB frame limit
/// (e.g. 300 PUTs of 64 KiB values, all within the per-op limits) is never
/// sent (the client logs "cannot encode request"), yet after the deadline it
/// is reported as `ERROR unknown outcome: no reply from server ...`, though
/// it certainly was not applied.
#[test]

fn a_command_over_the_request_limit_is_refused_up_front() {
    let cluster = Cluster::start();
    let value = "y".repeat(64 * 1024);
    let mut input = String::from("cmd\n");
    for i in 0..300 {
        input.push_str(&format!("op PUT orders{} {value}\n", 100 + i));
    }
    input.push_str("done\nGET orders100\n");
    let started = Instant::now();
    let got = cluster.run_client(&input);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(lines[0].starts_with("ABORTED"), "{:?}", lines[0]);
    assert_eq!(lines[1], "GET orders100 null");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

/// Regression (issue 9, item 5): a command of many GETs (or SWAPs) of 64 KiB
/// values has a reply larger than a frame. The server logged "cannot encode
/// reply", the client waited out its deadline and said `unknown outcome`,
/// and a write command's oversized outcome stayed in the session table. Now
/// the state machine refuses such a command before applying anything, the
/// same way on every replica, with an error that names the limit.
#[test]
fn a_command_whose_reply_would_exceed_the_limit_is_refused_promptly() {
    let cluster = Cluster::start();
    let value = "g".repeat(64 * 1024);
    // orders=100 over 3 servers: orders66 and up are on one partition.
    let mut input = String::new();
    for i in 0..300 {
        input.push_str(&format!("PUT orders{} {value}\n", 100 + i));
    }
    input.push_str("STOP\n");
    cluster.run_benchmark(&[], &input);

    let mut gets = String::new();
    for i in 0..300 {
        gets.push_str(&format!("op GET orders{}\n", 100 + i));
    }
    // Read-only: 300 GETs of 64 KiB.
    let started = Instant::now();
    let got = cluster.run_client(&format!("cmd\n{gets}done\n"));
    let elapsed = started.elapsed();
    assert!(
        got.starts_with("ABORTED") && got.contains("would exceed"),
        "{:?}",
        got.chars().take(200).collect::<String>()
    );
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");

    // With writes: nothing of it is applied.
    let started = Instant::now();
    let got = cluster.run_client(&format!(
        "cmd\nop PUT orders5000 new\nop SWAP orders100 swapped\n{gets}done\n\
         GET orders5000\nSWAP orders101 again\n"
    ));
    let elapsed = started.elapsed();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{:?}",
        got.chars().take(300).collect::<String>()
    );
    assert!(
        lines[0].starts_with("ABORTED") && lines[0].contains("would exceed"),
        "{:?}",
        lines[0]
    );
    assert_eq!(lines[1], "GET orders5000 null");
    assert_eq!(lines[2], format!("SWAP orders101 {value}"));
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    let got = cluster.run_benchmark(&[], "GET orders100\nSTOP\n");
    assert_eq!(got, format!("GET orders100 {value}\nSTOP\n"));

    // A command within the limit is answered.
    let mut fits = String::from("cmd\n");
    for i in 0..60 {
        fits.push_str(&format!("op GET orders{}\n", 100 + i));
    }
    let got = cluster.run_client(&format!("{fits}done\n"));
    assert!(
        got.ends_with("COMMITTED\n"),
        "{:?}",
        &got[got.len().saturating_sub(100)..]
    );
    assert_eq!(got.lines().count(), 61);
}
