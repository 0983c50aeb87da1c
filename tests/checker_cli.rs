//! `benchmark check --history FILE`: checks a history file without a
//! cluster. Exit 0 and `OK: ...` for a linearizable history, 1 and the
//! violation for a broken one, 2 for unreadable input, 3 when it gives up.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `benchmark check` with `args`, pointed at a manager address where
/// nothing listens: the subcommand must not try to connect.
fn check(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_benchmark"))
        .args(["--connect-addr", "127.0.0.1:9", "check"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start benchmark");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("benchmark check did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn history_file(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for line in lines {
        writeln!(file, "{line}").expect("write history");
    }
    file.flush().expect("flush");
    file
}

const VALID: &[&str] = &[
    r#"{"client":0,"invoke":0,"complete":100,"status":"ok","ops":[["PUT","customers1","alice"]],"results":["not_found"]}"#,
    r#"{"client":1,"invoke":50,"complete":150,"status":"ok","ops":[["GET","customers1"]],"results":[null]}"#,
    r#"{"client":1,"invoke":200,"complete":300,"status":"ok","ops":[["GET","customers1"]],"results":["alice"]}"#,
    r#"{"client":2,"invoke":10,"complete":null,"status":"unknown","ops":[["PUT","orders7","x"]]}"#,
    r#"{"client":0,"invoke":400,"complete":500,"status":"fail","ops":[["DELETE","customers1"]]}"#,
    "",
    r#"{"client":0,"invoke":600,"complete":700,"status":"ok","ops":[["SWAP","customers1","bob"],["GET","orders7"]],"results":["alice",null]}"#,
];

#[test]
fn a_valid_history_passes() {
    let file = history_file(VALID);
    let run = check(&["--history", file.path().to_str().unwrap()]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let first = run.stdout.lines().next().unwrap_or_default();
    // The last command joins customers1 and orders7: one partition.
    assert!(
        first.starts_with("OK: 6 commands, 1 key groups checked, "),
        "{}",
        run.stdout
    );
    assert!(first.ends_with(" states explored"), "{}", run.stdout);
    assert!(
        run.stdout.contains("4 ok, 1 unknown, 1 failed and dropped"),
        "{}",
        run.stdout
    );
}

#[test]
fn per_key_histories_are_checked_per_key() {
    let file = history_file(&VALID[..5]);
    let run = check(&["--history", file.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .starts_with("OK: 5 commands, 2 key groups checked, "),
        "{}",
        run.stdout
    );
}

#[test]
fn a_stale_read_is_reported_with_its_key_and_prefix() {
    let file = history_file(&[
        r#"{"client":0,"invoke":0,"complete":100,"status":"ok","ops":[["PUT","customers1","alice"]],"results":["not_found"]}"#,
        r#"{"client":0,"invoke":200,"complete":300,"status":"ok","ops":[["PUT","customers1","bob"]],"results":["found"]}"#,
        r#"{"client":1,"invoke":400,"complete":500,"status":"ok","ops":[["GET","customers1"]],"results":["alice"]}"#,
        r#"{"client":1,"invoke":600,"complete":700,"status":"ok","ops":[["GET","customers2"]],"results":[null]}"#,
    ]);
    let run = check(&["--history", file.path().to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with(
            "VIOLATION: key customers1: no linearization explains command #2 (client 1: GET customers1 -> alice)"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(">> #2 "), "{}", run.stdout);
    assert!(
        run.stdout.contains("PUT customers1 bob -> found"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1 of 2 key groups failed"),
        "{}",
        run.stdout
    );
}

#[test]
fn histories_from_a_cluster_with_data_need_an_unknown_initial_state() {
    // The first command reads a value written before the history began.
    let file = history_file(&[
        r#"{"client":0,"invoke":0,"complete":100,"status":"ok","ops":[["GET","customers1"]],"results":["from_before"]}"#,
        r#"{"client":0,"invoke":200,"complete":300,"status":"ok","ops":[["PUT","customers1","x"]],"results":["found"]}"#,
    ]);
    let path = file.path().to_str().unwrap();
    let run = check(&["--history", path]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let run = check(&["--history", path, "--initial-state", "unknown"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("OK: 2 commands"), "{}", run.stdout);
    let bad = check(&["--history", path, "--initial-state", "full"]);
    assert_eq!(bad.code, 2);
}

#[test]
fn unreadable_input_exits_2() {
    let missing = check(&["--history", "/nonexistent/history.jsonl"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("cannot open history file"),
        "{}",
        missing.stderr
    );

    let garbage = history_file(&[VALID[0], "{not json"]);
    let run = check(&["--history", garbage.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);

    // Well-formed JSON that breaks the format's rules.
    let backwards = history_file(&[
        r#"{"client":0,"invoke":500,"complete":100,"status":"ok","ops":[["GET","t1"]],"results":[null]}"#,
    ]);
    let run = check(&["--history", backwards.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("before it is invoked"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_state_budget_is_a_flag() {
    // Ten concurrent unknown writes and a read of a value nobody wrote: the
    // search must try every subset, so a tiny budget gives up (exit 3).
    let mut lines: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"client":{i},"invoke":0,"complete":null,"status":"unknown","ops":[["PUT","t1","v{i}"]]}}"#
            )
        })
        .collect();
    lines.push(
        r#"{"client":99,"invoke":10,"complete":20,"status":"ok","ops":[["GET","t1"]],"results":["nobody"]}"#
            .to_string(),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let file = history_file(&refs);
    let path = file.path().to_str().unwrap();
    let run = check(&["--history", path, "--max-states", "50"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("UNKNOWN: gave up after 50 states"),
        "{}",
        run.stdout
    );
    let run = check(&["--history", path]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);

    let bad = check(&["--history", path, "--max-states", "0"]);
    assert_eq!(bad.code, 2, "clap refuses a zero budget");
}

#[test]
fn help_documents_the_subcommand() {
    let out = Command::new(env!("CARGO_BIN_EXE_benchmark"))
        .args(["check", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--history <FILE>"), "{text}");
    assert!(text.contains("--max-states <N>"), "{text}");
    assert!(text.contains("[default: 10000000]"), "{text}");
    assert!(text.contains("--initial-state <STATE>"), "{text}");
}

/// `check` reads a file and never connects: its help lists no cluster
/// flags, while `load` (which connects) has them.
#[test]
fn check_has_no_cluster_flags_and_load_has_them() {
    let help = |sub: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_benchmark"))
            .args([sub, "--help"])
            .output()
            .expect("run benchmark");
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("utf-8 help")
    };
    let check = help("check");
    for flag in ["--connect-addr", "--timeout-ms"] {
        assert!(!check.contains(flag), "check --help lists {flag}:\n{check}");
        assert!(help("load").contains(flag), "load --help lacks {flag}");
    }
    assert!(
        !check.contains("partition"),
        "check speaks of key groups:\n{check}"
    );
}
