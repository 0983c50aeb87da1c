//! Client sessions and the session TTL, on real processes.
mod common;

use common::Cluster;
use std::thread;
use std::time::Duration;

/// Issue 9, item 6: a partition forgets a session idle for longer than
/// `--session-ttl-s` of log time (the leaders' clocks as stamped in the
/// log). A client that comes back after that is not refused: its next
/// command is new, so it starts the session afresh there, and runs once.
#[test]
fn a_client_idle_past_the_session_ttl_goes_on_working() {
    let cluster = Cluster::start_full(3, common::TABLES, false, &["--session-ttl-s", "2"], &[]);
    let mut a = cluster.spawn_client(&[]);
    a.send("PUT orders70 a1\n");
    assert_eq!(a.line(), "PUT orders70 not_found");
    thread::sleep(Duration::from_millis(2500));
    // Another session's write in the same partition moves log time past
    // the first session's TTL: the partition drops that session.
    assert_eq!(
        cluster.run_benchmark(&[], "PUT orders71 b\nSTOP\n"),
        "PUT orders71 not_found\nSTOP\n"
    );
    a.send("SWAP orders70 a2\nGET orders70\n");
    assert_eq!(a.lines(2), "SWAP orders70 a1\nGET orders70 a2\n");
    let (status, rest, stderr) = a.finish();
    assert!(status.success(), "{status}: {rest}\n{stderr}");
}
