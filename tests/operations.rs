//! What an operator relies on, against real processes: a cluster started
//! from configuration files (`--config`), JSON log lines (`--log-format
//! json`), and Prometheus metrics (`--metrics-addr`) that move with load.

mod common;

use common::{free_ports, ChildGuard, BENCHMARK, MANAGER, SERVER};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn spawn(program: &str, args: &[&str], stderr_path: &Path, name: &str) -> ChildGuard {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    ChildGuard {
        child,
        name: name.to_string(),
        stderr_path: Some(stderr_path.to_path_buf()),
    }
}

/// The body of `GET /metrics` at `addr` (HTTP/1.0: the reply is the body
/// until the connection closes, never chunked).
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot reach the metrics endpoint {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP reply from {addr}: {reply:?}"));
    assert!(head.starts_with("HTTP/1."), "{head}");
    assert!(head.contains(" 200 "), "{head}");
    body.to_string()
}

/// The sum of the samples of metric `name` whose labels contain every one
/// of `labels` (e.g. `op="put"`), in a Prometheus text exposition.
fn sample_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Runs `benchmark` with `stdin`, returns its stdout.
fn bench(manager: SocketAddr, args: &[&str], stdin: &str) -> String {
    let mut all = vec!["--connect-addr".to_string(), manager.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = common::run(BENCHMARK, &all, stdin);
    out.stdout
}

/// A manager and three durable servers, each started from its own TOML
/// file, with metrics endpoints; server 0 also gets `server0_flags`.
struct ConfigCluster {
    /// Manager first, then the servers.
    children: Vec<ChildGuard>,
    manager: SocketAddr,
    /// The servers' metrics endpoints, then the manager's.
    metrics: Vec<SocketAddr>,
    /// Flags every client of this cluster needs (TLS).
    client_flags: Vec<String>,
    dir: tempfile::TempDir,
}

impl ConfigCluster {
    fn start(server0_flags: &[&str]) -> ConfigCluster {
        ConfigCluster::start_with(&[], &[], server0_flags)
    }

    /// `node_flags` go to the manager and every server, `client_flags` to
    /// every client of the cluster (the readiness check too).
    fn start_with(
        node_flags: &[&str],
        client_flags: &[&str],
        server0_flags: &[&str],
    ) -> ConfigCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(8);
        let (manager, servers, metrics) = (ports[0], &ports[1..4], &ports[4..8]);
        let servers_list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
        std::fs::write(
            dir.path().join("manager.toml"),
            format!(
                "# the manager of a three-server cluster\n\
                 listen-addr = \"{manager}\"\n\
                 servers = [{}]\n\
                 tables = [\"customers=1000\", \"orders=100\"]\n\
                 metrics_addr = \"{}\"\n\
                 log-format = \"json\"\n",
                servers_list.join(", "),
                metrics[3]
            ),
        )
        .unwrap();
        let mut children = Vec::new();
        let manager_file = dir.path().join("manager.toml");
        let mut flags = vec!["--config", manager_file.to_str().unwrap()];
        flags.extend_from_slice(node_flags);
        children.push(spawn(
            MANAGER,
            &flags,
            &dir.path().join("manager.err"),
            "manager",
        ));
        for (i, addr) in servers.iter().enumerate() {
            let file = dir.path().join(format!("server{i}.toml"));
            std::fs::write(
                &file,
                format!(
                    "node_id = {i}\nlisten_addr = \"{addr}\"\nmanager_addr = [\"{manager}\"]\n\
                     persistence = true\ndb_path = \"{}\"\nlog_path = \"{}\"\n\
                     metrics_addr = \"{}\"\nlog_format = \"text\"\n",
                    dir.path().join(format!("db{i}")).display(),
                    dir.path().join(format!("log{i}")).display(),
                    metrics[i]
                ),
            )
            .unwrap();
            // A flag overrides the file: the servers log JSON after all.
            let mut flags = vec!["--config", file.to_str().unwrap(), "--log-format", "json"];
            flags.extend_from_slice(node_flags);
            if i == 0 {
                flags.extend_from_slice(server0_flags);
            }
            children.push(spawn(
                SERVER,
                &flags,
                &dir.path().join(format!("server{i}.err")),
                "server",
            ));
        }

        // Serving: a write and a read through the manager's map.
        let deadline = Instant::now() + common::READY_TIMEOUT;
        loop {
            let mut flags = vec!["--timeout-ms", "2000"];
            flags.extend_from_slice(client_flags);
            let mut args = vec!["--connect-addr".to_string(), manager.to_string()];
            args.extend(flags.iter().map(|f| f.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = common::run(BENCHMARK, &args, "PUT customers1 hello\nGET customers1\n");
            let out = format!("{}{}", run.stdout, run.stderr);
            if out.contains("GET customers1 hello") {
                break;
            }
            for c in &mut children {
                assert!(c.is_running(), "{} exited:\n{}", c.name, c.stderr());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = children
                    .iter()
                    .map(|c| format!("--- {}:\n{}", c.name, c.stderr()))
                    .collect();
                panic!("the cluster did not serve: {out}\n{}", logs.join("\n"));
            }
            thread::sleep(Duration::from_millis(200));
        }
        ConfigCluster {
            children,
            manager,
            metrics: metrics.to_vec(),
            client_flags: client_flags.iter().map(|f| f.to_string()).collect(),
            dir,
        }
    }
}

#[test]
fn a_cluster_from_config_files_logs_json_and_its_metrics_move_with_load() {
    let cluster = ConfigCluster::start(&[]);
    let (manager, metrics, children) = (cluster.manager, &cluster.metrics, &cluster.children);
    let scrape_all = || -> Vec<String> { metrics[..3].iter().map(|&a| scrape(a)).collect() };
    let sum = |texts: &[String], name: &str, labels: &[&str]| -> f64 {
        texts.iter().map(|t| sample_sum(t, name, labels)).sum()
    };
    let before = scrape_all();
    let load = bench(
        manager,
        &[
            "load",
            "--workload",
            "a",
            "--table",
            "customers",
            "--keys",
            "1000",
            "--clients",
            "4",
            "--duration-s",
            "2",
            "--progress-ms",
            "0",
            "--json",
        ],
        "",
    );
    let report: serde_json::Value = serde_json::from_str(load.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("benchmark load --json printed {load:?}: {e}"));
    let ok = report["ok"].as_f64().unwrap();
    assert!(ok > 100.0, "the load ran: {report}");
    // And transactions (two keys, mostly in two partitions).
    let txn = bench(
        manager,
        &[
            "load",
            "--workload",
            "txn",
            "--table",
            "customers",
            "--keys",
            "1000",
            "--clients",
            "2",
            "--duration-s",
            "1",
            "--progress-ms",
            "0",
            "--json",
        ],
        "",
    );
    let txn: serde_json::Value = serde_json::from_str(txn.lines().last().unwrap()).unwrap();
    assert!(
        txn["ok"].as_f64().unwrap() > 10.0,
        "the txn load ran: {txn}"
    );
    // The per-partition gauges refresh once a second.
    thread::sleep(Duration::from_millis(1500));
    let after = scrape_all();

    // Every command the load saw succeed was answered by some server.
    let answered = sum(&after, "distkv_requests_total", &["outcome=\"ok\""])
        - sum(&before, "distkv_requests_total", &["outcome=\"ok\""]);
    assert!(
        answered >= ok,
        "servers count {answered} answered commands, the load saw {ok}"
    );
    for state in ["prepared", "committed"] {
        let label = format!("state=\"{state}\"");
        let n = sum(&after, "distkv_txn_states_total", &[&label])
            - sum(&before, "distkv_txn_states_total", &[&label]);
        assert!(n > 0.0, "transaction steps answered {state}: {n}");
    }
    for op in ["get", "put"] {
        let label = format!("op=\"{op}\"");
        let n = sum(&after, "distkv_request_duration_seconds_count", &[&label])
            - sum(&before, "distkv_request_duration_seconds_count", &[&label]);
        assert!(n > 0.0, "{op} latencies recorded");
    }
    // Every server fsynced its log and replicated.
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let fsyncs = sample_sum(a, "distkv_wal_fsync_duration_seconds_count", &[])
            - sample_sum(b, "distkv_wal_fsync_duration_seconds_count", &[]);
        assert!(fsyncs > 0.0, "server {i} fsynced during the load");
        assert!(sample_sum(a, "distkv_wal_written_bytes_total", &[]) > 0.0);
    }
    assert!(
        sum(&after, "distkv_raft_sent_bytes_total", &[])
            > sum(&before, "distkv_raft_sent_bytes_total", &[]),
        "leaders sent appends"
    );
    // Gauges: 3 replicas of each partition, one leader each, the keys written.
    let replicas = sum(&after, "distkv_replicas", &[]);
    let partitions = sum(&after, "distkv_leaders", &[]);
    assert!(partitions >= 2.0, "two tables, a leader each: {partitions}");
    assert_eq!(replicas, 3.0 * partitions, "3 replicas per partition");
    assert!(sum(&after, "distkv_keys", &[]) >= 3.0, "keys stored");
    assert!(sum(&after, "distkv_sessions", &[]) >= 1.0);
    assert!(sample_sum(&after[0], "distkv_raft_term", &["partition=\"0\""]) >= 1.0);
    // The manager's view.
    let m = scrape(metrics[3]);
    assert_eq!(
        sample_sum(&m, "distkv_manager_servers", &["state=\"up\""]),
        3.0,
        "{m}"
    );
    assert_eq!(sample_sum(&m, "distkv_manager_is_leader", &[]), 1.0);
    assert!(sample_sum(&m, "distkv_manager_heartbeats_total", &[]) >= 3.0);
    assert!(m.contains("# HELP distkv_manager_partitions"), "described");

    // Every log line of every process is one JSON object.
    for c in children {
        let log = c.stderr();
        assert!(!log.is_empty(), "{} logged nothing", c.name);
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON log line ({e}): {line}", c.name));
            assert!(
                v["level"].is_string() && v["fields"]["message"].is_string(),
                "{line}"
            );
        }
    }
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "node_id = 1\nlisten_adress = \"127.0.0.1:1\"\n").unwrap();
    let out = common::run(SERVER, &["--config", file.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("unknown key 'listen_adress'"),
        "{}",
        out.stderr
    );
    // The metrics address taken by another process: a clear error, not a panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ports = free_ports(1);
    let out = common::run(
        SERVER,
        &[
            "--listen-addr",
            &ports[0].to_string(),
            "--manager-addr",
            "127.0.0.1:1",
            "--metrics-addr",
            &addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot serve metrics on {addr}")),
        "{}",
        out.stderr
    );
}

#[test]
fn redis_clients_use_distkv_through_the_resp_front_end() {
    let resp = free_ports(1)[0];
    let resp_flag = resp.to_string();
    let cluster = ConfigCluster::start(&["--resp-addr", &resp_flag]);
    let client = redis::Client::open(format!("redis://{resp}")).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to RESP at {resp}: {e}"));
    use redis::{cmd, Commands, Value};

    assert_eq!(cmd("PING").query::<String>(&mut con).unwrap(), "PONG");
    let _: () = con.set("customers1", "a").unwrap();
    assert_eq!(
        con.get::<_, Option<String>>("customers1")
            .unwrap()
            .as_deref(),
        Some("a")
    );
    assert_eq!(con.get::<_, Option<String>>("customers999").unwrap(), None);
    // What benchmark's PUT wrote is what GET reads (one store, two protocols).
    let out = bench(cluster.manager, &[], "GET customers1\n");
    assert_eq!(out.trim(), "GET customers1 a");

    // Several keys, two tables (so two partitions), one atomic command each.
    let _: () = con.mset(&[("customers2", "x"), ("orders3", "y")]).unwrap();
    let got: Vec<Option<String>> = con
        .mget(&["customers2", "orders3", "customers998"])
        .unwrap();
    assert_eq!(got, vec![Some("x".into()), Some("y".into()), None]);
    let n: i64 = cmd("EXISTS")
        .arg("customers2")
        .arg("orders3")
        .arg("customers998")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 2);
    let n: i64 = con.del(&["customers2", "orders3", "customers998"]).unwrap();
    assert_eq!(n, 2);
    assert_eq!(con.exists::<_, i64>("customers2").unwrap(), 0);

    // SWAP as GETSET and SET ... GET; SET ... NX.
    let old: Option<String> = con.getset("customers1", "b").unwrap();
    assert_eq!(old.as_deref(), Some("a"));
    // SET key value OPTION, its reply as an optional string.
    let set_with = |con: &mut redis::Connection, k: &str, v: &str, option: &str| {
        cmd("SET")
            .arg(k)
            .arg(v)
            .arg(option)
            .query::<Option<String>>(con)
            .unwrap()
    };
    let old = set_with(&mut con, "customers1", "c", "GET");
    assert_eq!(old.as_deref(), Some("b"));
    let first = set_with(&mut con, "customers5", "v", "NX");
    assert_eq!(first.as_deref(), Some("OK"));
    let again = set_with(&mut con, "customers5", "w", "NX");
    assert_eq!(again, None, "the key exists: not set");
    assert_eq!(con.get::<_, String>("customers5").unwrap(), "v");

    // MULTI/EXEC across partitions: one transaction.
    let (a, b, c): (String, String, Option<String>) = redis::pipe()
        .atomic()
        .set("customers10", "1")
        .set("orders10", "2")
        .get("customers10")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        (a.as_str(), b.as_str(), c.as_deref()),
        ("OK", "OK", Some("1"))
    );
    assert_eq!(con.get::<_, String>("orders10").unwrap(), "2");
    // Commands that need no data are answered in EXEC's array too.
    let (pong, ok): (String, String) = redis::pipe()
        .atomic()
        .cmd("PING")
        .set("orders13", "z")
        .query(&mut con)
        .unwrap();
    assert_eq!((pong.as_str(), ok.as_str()), ("PONG", "OK"));
    // A queued SET ... NX whose key exists: nothing in the block runs.
    assert_eq!(cmd("MULTI").query::<String>(&mut con).unwrap(), "OK");
    let queued: String = cmd("SET").arg("orders11").arg("w").query(&mut con).unwrap();
    assert_eq!(queued, "QUEUED");
    let _: String = cmd("SET")
        .arg("customers5")
        .arg("z")
        .arg("NX")
        .query(&mut con)
        .unwrap();
    assert_eq!(cmd("EXEC").query::<Value>(&mut con).unwrap(), Value::Nil);
    assert_eq!(
        con.get::<_, Option<String>>("orders11").unwrap(),
        None,
        "not applied"
    );
    assert_eq!(con.get::<_, String>("customers5").unwrap(), "v");
    // A bad command in the block discards it.
    assert_eq!(cmd("MULTI").query::<String>(&mut con).unwrap(), "OK");
    let _: String = cmd("SET").arg("orders12").arg("w").query(&mut con).unwrap();
    let bad = cmd("GET")
        .arg("nokey")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert!(bad.to_string().contains("invalid key"), "{bad}");
    let exec = cmd("EXEC").query::<Value>(&mut con).unwrap_err();
    assert_eq!(exec.kind(), redis::ErrorKind::ExecAbortError, "{exec}");
    assert_eq!(con.get::<_, Option<String>>("orders12").unwrap(), None);

    // Range reads in distkv form; INFO; errors are RESP errors, and the
    // connection stays usable.
    let pairs: Vec<String> = cmd("RANGE")
        .arg("customers1")
        .arg("customers10")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        pairs,
        vec!["customers1", "c", "customers5", "v", "customers10", "1"]
    );
    let info: String = cmd("INFO").query(&mut con).unwrap();
    assert!(
        info.contains("distkv_version:") && info.contains("tables:customers,orders"),
        "{info}"
    );
    let e = cmd("GET")
        .arg("user:1")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert!(e.to_string().contains("invalid key"), "{e}");
    let e = cmd("FLUSHALL").query::<Value>(&mut con).unwrap_err();
    assert!(e.to_string().contains("unknown command"), "{e}");
    assert_eq!(cmd("PING").query::<String>(&mut con).unwrap(), "PONG");

    // Garbage on the socket: an error reply and a closed connection, and
    // the front end still serves others.
    let mut raw = TcpStream::connect(resp).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"*1\r\n$999999999\r\n").unwrap();
    let mut reply = String::new();
    let _ = raw.read_to_string(&mut reply);
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    assert_eq!(con.get::<_, String>("customers1").unwrap(), "c");
}

#[test]
fn sigterm_hands_the_leaderships_off_flushes_and_exits_cleanly() {
    let mut cluster = common::Cluster::start_replicated(3, 3, true);
    let put = common::run(
        BENCHMARK,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        "PUT customers1 before\nPUT orders1 before\n",
    );
    assert!(put.stderr.is_empty(), "{}", put.stderr);
    let leader = cluster
        .leader_of("customers1", Duration::from_secs(5))
        .expect("a leader of customers1");
    let pid = cluster.server_pid(leader).unwrap();
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = cluster
        .wait_server_exit(leader, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("server {leader} still runs 10 s after SIGTERM"));
    let took = started.elapsed();
    let log = cluster.server_stderr(leader);
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("stopping: handing off leaderships"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        took <= distkv::server::HANDOFF_MAX + Duration::from_secs(2),
        "stopping took {took:?}"
    );
    // Another server leads now, and the data is all there.
    let now = cluster
        .leader_of("customers1", Duration::from_secs(5))
        .expect("a new leader");
    assert_ne!(now, leader);
    let out = common::run(
        BENCHMARK,
        &["--connect-addr", &cluster.manager_addr.to_string()],
        "GET customers1\nGET orders1\nPUT customers2 after\n",
    );
    assert_eq!(
        out.stdout, "GET customers1 before\nGET orders1 before\nPUT customers2 not_found\n",
        "{}",
        out.stderr
    );
}

/// `--tls-ca DIR/ca.pem --tls-cert DIR/<who>.pem --tls-key DIR/<who>.key`.
fn tls_flags(dir: &Path, who: &str) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        dir.join(format!("{who}.pem")).display().to_string(),
        "--tls-key".into(),
        dir.join(format!("{who}.key")).display().to_string(),
    ]
}

#[test]
fn with_tls_only_holders_of_the_clusters_certificates_get_in() {
    let certs = tempfile::tempdir().unwrap();
    let (ours, theirs) = (certs.path().join("ours"), certs.path().join("theirs"));
    for dir in [&ours, &theirs] {
        let out = common::run(
            common::ADMIN,
            &["gen-certs", "--out", dir.to_str().unwrap()],
            "",
        );
        assert!(out.status.success(), "{}", out.stderr);
        assert!(out.stdout.contains("ca.pem") && out.stdout.contains("client.key"));
    }
    let node = tls_flags(&ours, "node");
    let client = tls_flags(&ours, "client");
    let refs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let node_refs: Vec<&str> = node.iter().map(String::as_str).collect();
    let client_refs: Vec<&str> = client.iter().map(String::as_str).collect();
    let resp = free_ports(1)[0].to_string();
    let password = certs.path().join("resp.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    // Servers, manager and clients all on TLS: everything works (the
    // readiness check writes and reads through it).
    let cluster = ConfigCluster::start_with(
        &node_refs,
        &client_refs,
        &[
            "--resp-addr",
            &resp,
            "--resp-password-file",
            password.to_str().unwrap(),
        ],
    );
    let mut flags = refs(&client);
    flags.extend(["--timeout-ms".to_string(), "3000".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = bench(cluster.manager, &flags, "PUT orders5 x\nGET orders5\n");
    assert_eq!(out, "PUT orders5 not_found\nGET orders5 x\n");
    assert_eq!(cluster.client_flags.len(), 6);

    // No certificate, or one from another CA: refused, with a clear error.
    let mut strangers: Vec<Vec<String>> = vec![vec![], tls_flags(&theirs, "client")];
    for flags in strangers.iter_mut() {
        flags.extend(["--timeout-ms".to_string(), "1500".to_string()]);
        let mut args = vec!["--connect-addr".to_string(), cluster.manager.to_string()];
        args.extend(flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::run(BENCHMARK, &args, "GET orders5\n");
        assert!(!out.status.success(), "a stranger got in: {}", out.stdout);
        assert!(!out.stdout.contains("GET orders5 x"), "{}", out.stdout);
        assert!(
            out.stderr.contains("cannot connect to the cluster"),
            "{}",
            out.stderr
        );
    }
    let manager_log = cluster.children[0].stderr();
    assert!(
        manager_log.contains("TLS handshake failed"),
        "the manager says why it refused: {manager_log}"
    );

    // A server with another CA's certificate cannot join the cluster, nor
    // can one with our CA's client certificate (clients may read and
    // write, not be members).
    let mut intruders = Vec::new();
    for (i, (dir, who)) in [(&theirs, "node"), (&ours, "client")]
        .into_iter()
        .enumerate()
    {
        let port = free_ports(1)[0].to_string();
        let mut args = vec![
            "--node-id".to_string(),
            (3 + i).to_string(),
            "--join".to_string(),
            "--listen-addr".to_string(),
            port.clone(),
            "--manager-addr".to_string(),
            cluster.manager.to_string(),
        ];
        args.extend(tls_flags(dir, who));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("intruder{i}");
        let err = cluster.dir.path().join(format!("{name}.err"));
        intruders.push(spawn(SERVER, &args, &err, &name));
    }
    thread::sleep(Duration::from_secs(3));
    let mut admin = vec!["--connect-addr".to_string(), cluster.manager.to_string()];
    admin.extend(client.iter().cloned());
    admin.extend(["--json".to_string(), "servers".to_string()]);
    let admin: Vec<&str> = admin.iter().map(String::as_str).collect();
    let out = common::run(common::ADMIN, &admin, "");
    assert!(out.status.success(), "{}", out.stderr);
    let servers: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<u64> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![0, 1, 2], "the intruders are not in the cluster");
    let log = intruders[0].stderr();
    assert!(log.contains("TLS handshake failed"), "{log}");
    let manager_log = cluster.children[0].stderr();
    assert!(
        manager_log.contains("a client certificate sent a message only cluster members may send"),
        "{manager_log}"
    );
    for mut intruder in intruders {
        intruder.kill();
    }

    // The Redis port is mutual TLS too, and wants the password first. (The
    // front end is a client of the cluster: it reaches it over TLS.)
    let replies = resp_over_tls(
        &resp,
        &ours,
        &[
            b"GET orders5\r\n",
            b"AUTH nope\r\n",
            b"AUTH default s3cret\r\n",
            b"GET orders5\r\n",
        ],
    );
    let replies: Vec<String> = replies
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(
        replies,
        [
            "-NOAUTH Authentication required.\r\n",
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            "+OK\r\n",
            "$1\r\nx\r\n"
        ]
    );
    // Without TLS, nothing is read.
    let mut raw = TcpStream::connect(resp.as_str()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.write_all(b"AUTH s3cret\r\nGET orders5\r\n");
    let mut reply = [0u8; 64];
    let n = raw.read(&mut reply).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&reply[..n]).contains('x'));
    // (The connection may close a moment before the line is written.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = cluster.children[1].stderr();
    while !log.contains("RESP: TLS handshake failed") && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        log = cluster.children[1].stderr();
    }
    assert!(log.contains("RESP: TLS handshake failed"), "{log}");
}

/// Sends each request over one TLS connection (with `certs`' client
/// certificate) to a Redis port, and returns each reply.
fn resp_over_tls(addr: &str, certs: &Path, requests: &[&[u8]]) -> Vec<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = distkv::rt::tls::load(
        &certs.join("ca.pem"),
        &certs.join("client.pem"),
        &certs.join("client.key"),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tls
            .connector
            .connect(tls.server_name.clone(), tcp)
            .await
            .unwrap();
        let mut replies = Vec::new();
        for request in requests {
            s.write_all(request).await.unwrap();
            let mut buf = vec![0u8; 256];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf));
            let n = read.await.expect("a reply in time").unwrap();
            replies.push(buf[..n].to_vec());
        }
        replies
    })
}
