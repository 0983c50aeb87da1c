//! Shared helpers for the integration tests: a real cluster of `manager` and
//! `server` processes on loopback, and bounded runs of `benchmark` / `client`.
//!
//! Every wait is bounded: a helper that does not finish in time is killed and
//! the test fails with its stderr. Every child is killed when its guard (or
//! the [`Cluster`]) is dropped, also when a test panics.
#![allow(dead_code)] // each test binary uses a different subset

pub mod nemesis;

use distkv::key::Key;
use distkv::map::PartitionMap;
use distkv::op::Op;
use distkv::wire::frame::{encode_frame, FrameHeader};
use distkv::wire::{decode_msg, encode_msg, Msg, FRAME_HEADER_LEN};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const MANAGER: &str = env!("CARGO_BIN_EXE_manager");
pub const SERVER: &str = env!("CARGO_BIN_EXE_server");
pub const BENCHMARK: &str = env!("CARGO_BIN_EXE_benchmark");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_client");
pub const ADMIN: &str = env!("CARGO_BIN_EXE_admin");

/// The longest any one helper process may run before it is killed.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a cluster may take to answer after (re)starting.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The default tables: `customers` (key space 1000) and `orders` (100).
pub const TABLES: &str = "customers=1000,orders=100";

/// `DISTKV_TEST_TLS=1`: every [`Cluster`] runs with mutual TLS (one test
/// CA per test binary, `admin gen-certs`' files): servers and managers with
/// the member certificate, and every client process that names one of
/// these clusters' managers (`run`, `Cluster::admin`, ...) with the client
/// certificate, through the `DISTKV_TLS_*` environment variables; this test
/// process itself (library clients, [`Raw`] connections) too. Tests that
/// build their own clusters and pick their own flags are not touched.
pub fn tls_mode() -> bool {
    std::env::var_os("DISTKV_TEST_TLS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn tls_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        distkv::rt::tls::generate(dir.path(), 2).expect("test certificates");
        dir
    })
    .path()
}

/// The managers' addresses of the TLS clusters started so far.
static TLS_CLUSTERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// In TLS mode, gives `cmd` the cluster's TLS as a member (`member`) or a
/// client.
pub fn with_tls(cmd: &mut Command, member: bool) -> &mut Command {
    if tls_mode() {
        let who = if member { "node" } else { "client" };
        let dir = tls_dir();
        cmd.env("DISTKV_TLS_CA", dir.join("ca.pem"))
            .env("DISTKV_TLS_CERT", dir.join(format!("{who}.pem")))
            .env("DISTKV_TLS_KEY", dir.join(format!("{who}.key")));
    }
    cmd
}

/// In TLS mode, whether a process run with `args` is one of our TLS
/// clusters' (it names one of their managers) and so needs TLS.
fn for_tls_cluster(args: &[&str]) -> bool {
    let clusters = TLS_CLUSTERS.lock().unwrap();
    args.iter()
        .any(|a| clusters.iter().any(|m| a.contains(m.as_str())))
}

/// In TLS mode, turns TLS on in this test process (as a client), once.
pub fn tls_in_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if tls_mode() {
        ONCE.call_once(|| {
            let dir = tls_dir();
            distkv::rt::tls::enable(
                &dir.join("ca.pem"),
                &dir.join("client.pem"),
                &dir.join("client.key"),
            )
            .expect("TLS in the test process");
        });
    }
}

/// A connection from this test process to a cluster port, speaking
/// distkv's frames directly: plain TCP, or TLS with the client certificate
/// in TLS mode.
pub enum Raw {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Raw> {
        Raw::wrap(TcpStream::connect(addr)?)
    }

    pub fn connect_timeout(addr: &SocketAddr, wait: Duration) -> std::io::Result<Raw> {
        Raw::wrap(TcpStream::connect_timeout(addr, wait)?)
    }

    fn wrap(tcp: TcpStream) -> std::io::Result<Raw> {
        if !tls_mode() {
            return Ok(Raw::Plain(tcp));
        }
        tls_in_process();
        let tls = distkv::rt::tls::get().expect("TLS is on");
        let conn =
            rustls::ClientConnection::new(tls.client_config.clone(), tls.server_name.clone())
                .map_err(std::io::Error::other)?;
        Ok(Raw::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Raw::Plain(s) => s,
            Raw::Tls(s) => &s.sock,
        }
    }

    pub fn set_read_timeout(&self, wait: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(wait)
    }

    /// Ends our sending side (after a TLS close_notify, in TLS mode).
    pub fn shutdown_write(&mut self) -> std::io::Result<()> {
        if let Raw::Tls(s) = self {
            s.conn.send_close_notify();
            s.flush()?;
        }
        self.tcp().shutdown(std::net::Shutdown::Write)
    }
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Raw::Plain(s) => s.read(buf),
            Raw::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Raw::Plain(s) => s.write(buf),
            Raw::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Raw::Plain(s) => s.flush(),
            Raw::Tls(s) => s.flush(),
        }
    }
}

/// `n` distinct free loopback ports: bind port 0, read it, release it. All
/// listeners are held until every port is picked, so the ports differ.
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub stderr_path: Option<PathBuf>,
}

impl ChildGuard {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }

    /// The process's stderr so far (if it goes to a file).
    pub fn stderr(&self) -> String {
        self.stderr_path
            .as_deref()
            .map(read_lossy)
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Polls `try_wait` until the child exits or `limit` passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// What a finished helper process produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args` with `stdin` as its input, waits at most
/// [`PROCESS_TIMEOUT`] (then kills it and panics with its stderr).
pub fn run(program: &str, args: &[&str], stdin: &str) -> Output {
    run_bytes(program, args, stdin.as_bytes())
}

/// [`run`] with arbitrary bytes as input.
pub fn run_bytes(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(program);
    if for_tls_cluster(args) {
        let member = program == SERVER || program == MANAGER;
        with_tls(&mut cmd, member);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    // Drain stdout and stderr in threads so a full pipe cannot block the child.
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // The child may exit before reading everything (e.g. after STOP): ignore EPIPE.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut guard = ChildGuard {
        child,
        name: program.to_string(),
        stderr_path: None,
    };
    let status = wait_timeout(&mut guard.child, PROCESS_TIMEOUT);
    if status.is_none() {
        guard.kill();
    }
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{program} {args:?} did not finish within {PROCESS_TIMEOUT:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
}

/// A running cluster: one manager and N servers on free loopback ports.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The first manager's address (the only one unless
    /// [`Cluster::start_managers`]).
    pub manager_addr: SocketAddr,
    /// Every manager's address (clients and servers get them all).
    pub manager_addrs: Vec<SocketAddr>,
    /// The managers' control-group addresses (`--peers`); empty for one.
    pub peer_addrs: Vec<SocketAddr>,
    pub server_addrs: Vec<SocketAddr>,
    pub tables: String,
    managers: Vec<Option<ChildGuard>>,
    servers: Vec<Option<ChildGuard>>,
    /// Every process started so far and its stderr file, in start order.
    log_files: Vec<(String, PathBuf)>,
    /// Servers run with `--persistence`, data in [`Cluster::db_dir`] and
    /// [`Cluster::log_dir`] (kept across restarts).
    persistence: bool,
    /// Extra flags for every server (e.g. `--checkpoint-log-mb 1`).
    server_args: Vec<String>,
    /// Extra flags for the manager (e.g. `--replicas 3`).
    manager_args: Vec<String>,
    /// Servers added with [`Cluster::join_server`] (started with `--join`).
    joined: Vec<usize>,
}

impl Cluster {
    /// A 3-server cluster with [`TABLES`].
    pub fn start() -> Cluster {
        Cluster::start_with(3, TABLES)
    }

    /// Starts a manager and `n` servers and waits until every partition of
    /// every table answers. Retries with new ports if a port was taken in the
    /// meantime (another test may have grabbed it).
    pub fn start_with(n: usize, tables: &str) -> Cluster {
        Cluster::start_opts(n, tables, false, &[])
    }

    /// Like [`Cluster::start_with`], with every server run with
    /// `--persistence --db-path <dir>/db<i> --log-path <dir>/log<i>` and
    /// `server_args`. Restarts reuse the same directories.
    pub fn start_persistent(n: usize, tables: &str, server_args: &[&str]) -> Cluster {
        Cluster::start_opts(n, tables, true, server_args)
    }

    /// `n` servers with [`TABLES`] and `--replicas replicas` on the manager,
    /// with `--persistence` (in the cluster's temporary directory) or in
    /// memory. Restarts reuse the same flags and directories.
    pub fn start_replicated(n: usize, replicas: usize, persistence: bool) -> Cluster {
        let replicas = replicas.to_string();
        Cluster::start_full(n, TABLES, persistence, &[], &["--replicas", &replicas])
    }

    fn start_opts(n: usize, tables: &str, persistence: bool, server_args: &[&str]) -> Cluster {
        Cluster::start_full(n, tables, persistence, server_args, &[])
    }

    /// The most general start: every flag list is kept for restarts.
    pub fn start_full(
        n: usize,
        tables: &str,
        persistence: bool,
        server_args: &[&str],
        manager_args: &[&str],
    ) -> Cluster {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let mut cluster = Cluster::spawn(n, tables, persistence, server_args, manager_args);
            match cluster.wait_ready() {
                Ok(()) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("the cluster did not come up: {last_error}");
    }

    /// `n` servers and `m` managers (`--peers`, each with a `--data-dir`
    /// in the cluster's directory), the managers with `manager_args`.
    pub fn start_managers(n: usize, m: usize, persistence: bool, manager_args: &[&str]) -> Cluster {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let mut cluster = Cluster::spawn_m(n, m, TABLES, persistence, &[], manager_args);
            match cluster.wait_ready() {
                Ok(()) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("the cluster did not come up: {last_error}");
    }

    fn spawn(
        n: usize,
        tables: &str,
        persistence: bool,
        server_args: &[&str],
        manager_args: &[&str],
    ) -> Cluster {
        Cluster::spawn_m(n, 1, tables, persistence, server_args, manager_args)
    }

    fn spawn_m(
        n: usize,
        m: usize,
        tables: &str,
        persistence: bool,
        server_args: &[&str],
        manager_args: &[&str],
    ) -> Cluster {
        let peers = if m > 1 { m } else { 0 };
        let ports = free_ports(n + m + peers);
        if tls_mode() {
            tls_in_process();
            let mut clusters = TLS_CLUSTERS.lock().unwrap();
            clusters.extend(ports[..m].iter().map(|a| a.to_string()));
        }
        let mut cluster = Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            manager_addr: ports[0],
            manager_addrs: ports[..m].to_vec(),
            peer_addrs: ports[m..m + peers].to_vec(),
            server_addrs: ports[m + peers..].to_vec(),
            tables: tables.to_string(),
            managers: (0..m).map(|_| None).collect(),
            servers: (0..n).map(|_| None).collect(),
            log_files: Vec::new(),
            persistence,
            server_args: server_args.iter().map(|a| a.to_string()).collect(),
            manager_args: manager_args.iter().map(|a| a.to_string()).collect(),
            joined: Vec::new(),
        };
        cluster.start_manager();
        for i in 0..n {
            cluster.start_server(i);
        }
        cluster
    }

    fn spawn_logged(&mut self, name: &str, program: &str, args: &[String]) -> ChildGuard {
        let path = self
            .dir
            .path()
            .join(format!("{name}.{}.stderr", self.log_files.len()));
        self.log_files.push((name.to_string(), path.clone()));
        let stderr = File::create(&path).expect("create a log file");
        let child = with_tls(&mut Command::new(program), program != BENCHMARK)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        ChildGuard {
            child,
            name: name.to_string(),
            stderr_path: Some(path),
        }
    }

    fn start_manager(&mut self) {
        for i in 0..self.managers.len() {
            self.start_manager_i(i);
        }
    }

    /// Starts manager `i` (not waiting for anything).
    pub fn start_manager_i(&mut self, i: usize) {
        let servers = self
            .server_addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--listen-addr".to_string(),
            self.manager_addrs[i].to_string(),
            "--servers".to_string(),
            servers,
            "--tables".to_string(),
            self.tables.clone(),
        ];
        if !self.peer_addrs.is_empty() {
            let peers: Vec<String> = self.peer_addrs.iter().map(|a| a.to_string()).collect();
            args.extend([
                "--peers".to_string(),
                peers.join(","),
                "--node-id".to_string(),
                i.to_string(),
                "--data-dir".to_string(),
                self.dir
                    .path()
                    .join(format!("manager{i}"))
                    .display()
                    .to_string(),
            ]);
        }
        args.extend(self.manager_args.iter().cloned());
        let name = if self.managers.len() > 1 {
            format!("manager{i}")
        } else {
            "manager".to_string()
        };
        let guard = self.spawn_logged(&name, MANAGER, &args);
        self.managers[i] = Some(guard);
    }

    /// kill -9 manager `i`.
    pub fn kill_manager_i(&mut self, i: usize) {
        if let Some(mut m) = self.managers[i].take() {
            m.kill();
        }
    }

    /// The managers' addresses, comma-separated (for `--connect-addr`).
    pub fn managers_arg(&self) -> String {
        let all: Vec<String> = self.manager_addrs.iter().map(|a| a.to_string()).collect();
        all.join(",")
    }

    fn start_server(&mut self, i: usize) {
        let args = vec![
            "--node-id".to_string(),
            i.to_string(),
            "--listen-addr".to_string(),
            self.server_addrs[i].to_string(),
            "--manager-addr".to_string(),
            self.managers_arg(),
            // Re-register quickly so a restarted manager learns of us soon.
            "--heartbeat-ms".to_string(),
            "200".to_string(),
        ];
        let mut args = args;
        if self.persistence {
            args.push("--persistence".to_string());
            args.push("--db-path".to_string());
            args.push(self.db_dir(i).display().to_string());
            args.push("--log-path".to_string());
            args.push(self.log_dir(i).display().to_string());
        }
        if self.joined.contains(&i) {
            args.push("--join".to_string());
        }
        args.extend(self.server_args.iter().cloned());
        let guard = self.spawn_logged(&format!("server{i}"), SERVER, &args);
        self.servers[i] = Some(guard);
    }

    /// Waits until a benchmark can scan every table over its whole number
    /// range (so every partition on every server answers), or
    /// [`READY_TIMEOUT`] passes. Fails early if a process exited.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut probe = String::new();
        for table in self.tables.split(',') {
            let name = table.split('=').next().unwrap();
            probe.push_str(&format!("SCAN {name}0 {name}{}\n", u64::MAX));
        }
        probe.push_str("STOP\n");
        loop {
            if let Some(dead) = self.dead_process() {
                return Err(format!("{dead} exited early:\n{}", self.logs()));
            }
            let out = run(
                BENCHMARK,
                &[
                    "--connect-addr",
                    &self.manager_addr.to_string(),
                    "--timeout-ms",
                    "1000",
                ],
                &probe,
            );
            if out.status.success()
                && !out.stdout.contains("ERROR")
                && out.stdout.ends_with("STOP\n")
            {
                if tls_mode() {
                    self.assert_tls_enforced();
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}; last probe:\n{}\n{}\n{}",
                    out.stdout,
                    out.stderr,
                    self.logs()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// In TLS mode: a plain-text client's requests (a map request to the
    /// manager, a command to a server: both are answered in plain text
    /// without TLS) get no reply frame, and the connection is closed (so the
    /// tests really ran over TLS).
    fn assert_tls_enforced(&self) {
        let execute = Msg::Execute {
            req: 1,
            session: 1,
            seq: 1,
            sent_ms: 0,
            partition: 0,
            ops: vec![Op::Get {
                key: Key::new("customers", 1),
            }],
        };
        let mut targets = vec![(self.manager_addr, Msg::GetMap { req: 1, epoch: 0 })];
        targets.extend(self.server_addrs.first().map(|&a| (a, execute.clone())));
        for (addr, request) in targets {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for m in [Msg::Hello { advertise: None }, request] {
                let _ = s.write_all(&encode_frame(&encode_msg(&m).unwrap()));
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => {
                        assert!(
                            !matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ),
                            "TLS mode, but {addr} kept a plain-text connection open"
                        );
                        break; // reset: closed
                    }
                }
            }
            assert!(
                got.first() != Some(&distkv::wire::PROTOCOL_VERSION),
                "TLS mode, but {addr} answered a plain-text request"
            );
        }
    }

    fn dead_process(&mut self) -> Option<String> {
        let manager = self.managers.iter_mut().flatten();
        let servers = self.servers.iter_mut().flatten();
        for p in manager.chain(servers) {
            if !p.is_running() {
                return Some(p.name.clone());
            }
        }
        None
    }

    /// The stderr of every process started so far (killed ones included),
    /// for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, path) in &self.log_files {
            out.push_str(&format!("--- {name} stderr\n{}\n", read_lossy(path)));
        }
        out
    }

    /// Panics (with the logs) unless the manager and every server still run.
    pub fn assert_all_running(&mut self) {
        if let Some(dead) = self.dead_process() {
            panic!("{dead} is no longer running (its log follows)");
        }
    }

    /// Whether server `i` is running.
    pub fn server_running(&mut self, i: usize) -> bool {
        self.servers[i].as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Whether the manager is running.
    pub fn manager_running(&mut self) -> bool {
        self.managers
            .iter_mut()
            .all(|m| m.as_mut().is_some_and(ChildGuard::is_running))
    }

    /// kill -9 server `i`.
    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            s.kill();
        }
    }

    /// Starts server `i` again (killing it first if it runs) and waits until
    /// the cluster answers everywhere.
    pub fn restart_server(&mut self, i: usize) {
        self.kill_server(i);
        self.start_server(i);
        if let Err(e) = self.wait_ready() {
            panic!("server {i} did not come back: {e}");
        }
    }

    /// Starts one more server, with the next node id and `--join` (the
    /// manager does not list it); returns its index. Does not wait.
    pub fn join_server(&mut self) -> usize {
        let i = self.server_addrs.len();
        self.server_addrs.push(free_ports(1)[0]);
        self.servers.push(None);
        self.joined.push(i);
        self.start_server(i);
        i
    }

    /// kill -9 the manager (every manager).
    pub fn kill_manager(&mut self) {
        for i in 0..self.managers.len() {
            self.kill_manager_i(i);
        }
    }

    /// Starts the manager again and waits until the cluster answers.
    pub fn restart_manager(&mut self) {
        self.kill_manager();
        self.start_manager();
        if let Err(e) = self.wait_ready() {
            panic!("the manager did not come back: {e}");
        }
    }

    /// Server `i`'s snapshot directory (with [`Cluster::start_persistent`]).
    pub fn db_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("db{i}"))
    }

    /// Server `i`'s write-ahead log directory (with [`Cluster::start_persistent`]).
    pub fn log_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("log{i}"))
    }

    /// Starts server `i` (killing it first if it runs) without waiting for
    /// anything: for servers expected to fail, or to time their start.
    pub fn spawn_server(&mut self, i: usize) {
        self.kill_server(i);
        self.start_server(i);
    }

    /// Waits at most `limit` for server `i` to exit; its status, or `None`
    /// if it still runs (or was never started).
    pub fn wait_server_exit(&mut self, i: usize, limit: Duration) -> Option<ExitStatus> {
        let guard = self.servers[i].as_mut()?;
        wait_timeout(&mut guard.child, limit)
    }

    /// The stderr of the latest incarnation of server `i` (also after it was
    /// killed or exited).
    pub fn server_stderr(&self, i: usize) -> String {
        let name = format!("server{i}");
        self.log_files
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, path)| read_lossy(path))
            .unwrap_or_default()
    }

    /// kill -9 the given servers (all signals first, then reaping), then
    /// starts them again and waits until the cluster answers everywhere.
    pub fn restart_servers(&mut self, which: &[usize]) {
        for &i in which {
            if let Some(s) = self.servers[i].as_mut() {
                let _ = s.child.kill();
            }
        }
        for &i in which {
            self.kill_server(i);
        }
        for &i in which {
            self.start_server(i);
        }
        if let Err(e) = self.wait_ready() {
            panic!("servers {which:?} did not come back: {e}");
        }
    }

    /// kill -9 the manager and every server at once: every signal is sent
    /// before any process is reaped.
    pub fn kill_all(&mut self) {
        let manager = self.managers.iter_mut().flatten();
        for p in manager.chain(self.servers.iter_mut().flatten()) {
            let _ = p.child.kill();
        }
        self.kill_manager();
        for i in 0..self.servers.len() {
            self.kill_server(i);
        }
    }

    /// Starts the manager and every server that is not running, and waits
    /// until the cluster answers everywhere.
    pub fn start_all(&mut self) {
        for i in 0..self.managers.len() {
            if !self.managers[i]
                .as_mut()
                .is_some_and(ChildGuard::is_running)
            {
                self.kill_manager_i(i);
                self.start_manager_i(i);
            }
        }
        for i in 0..self.servers.len() {
            if !self.server_running(i) {
                self.kill_server(i);
                self.start_server(i);
            }
        }
        if let Err(e) = self.wait_ready() {
            panic!("the cluster did not come back: {e}");
        }
    }

    /// Starts `benchmark` (stdin mode) with `args` and feeds it `input` from
    /// a thread; every stdout line is sent on `tx` as `(tag, line)` as soon
    /// as it is printed. Its stderr goes to the cluster's log files. The
    /// process is killed when the returned guard is dropped.
    pub fn stream_benchmark(
        &mut self,
        args: &[&str],
        input: String,
        tag: usize,
        tx: mpsc::Sender<(usize, String)>,
    ) -> ChildGuard {
        let name = format!("benchmark{tag}");
        let path = self
            .dir
            .path()
            .join(format!("{name}.{}.stderr", self.log_files.len()));
        self.log_files.push((name.clone(), path.clone()));
        let stderr = File::create(&path).expect("create a log file");
        let mut child = with_tls(&mut Command::new(BENCHMARK), false)
            .args(self.connect_args())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BENCHMARK}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        // The process may be killed before it read everything: ignore EPIPE.
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((tag, line)).is_err() {
                    break;
                }
            }
        });
        ChildGuard {
            child,
            name,
            stderr_path: Some(path),
        }
    }

    /// The partition map the manager serves: a pure function of its flags,
    /// rebuilt here from the same ones.
    pub fn partition_map(&self) -> PartitionMap {
        let tables: Vec<(String, u64)> = self
            .tables
            .split(',')
            .map(|t| {
                let (name, size) = t.split_once('=').expect("table=size");
                (name.to_string(), size.parse().expect("a table size"))
            })
            .collect();
        let replicas = self
            .manager_args
            .windows(2)
            .find(|w| w[0] == "--replicas")
            .map_or(3, |w| w[1].parse().expect("a replica count"));
        PartitionMap::build(&tables, &self.server_addrs, replicas).expect("a valid map")
    }

    /// Which running server leads the partition of `key`, found by asking
    /// each one directly for a GET of `key` (see [`probe_leader`]); `None`
    /// if none answers as a leader within `wait`.
    pub fn leader_of(&mut self, key: &str, wait: Duration) -> Option<usize> {
        let key = Key::parse(key).expect("a valid key");
        let map = self.partition_map();
        let partition = map.partition_of(&key).expect("a known table").id;
        let running: Vec<usize> = (0..self.server_addrs.len())
            .filter(|&i| self.server_running(i))
            .collect();
        running
            .into_iter()
            .find(|&i| probe_leader(self.server_addrs[i], partition, &key, wait) == Some(true))
    }

    /// Runs `admin` against this cluster's manager (10 s timeout) with
    /// `args`; returns what it printed and its status, whatever they are.
    pub fn admin(&self, args: &[&str]) -> Output {
        let addr = self.managers_arg();
        let mut all = vec!["--connect-addr", &addr, "--timeout-ms", "10000"];
        all.extend_from_slice(args);
        run(ADMIN, &all, "")
    }

    /// `admin <what> --json` (`servers` or `partitions`), which must succeed.
    pub fn admin_json(&self, what: &str) -> Vec<serde_json::Value> {
        let out = self.admin(&[what, "--json"]);
        assert!(out.status.success(), "admin {what}: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// The `--connect-addr` arguments for this cluster.
    pub fn connect_args(&self) -> Vec<String> {
        vec!["--connect-addr".to_string(), self.managers_arg()]
    }

    /// Runs `benchmark` with `args` (after `--connect-addr`) and `stdin`;
    /// asserts it exits 0 and returns its stdout.
    pub fn run_benchmark(&self, args: &[&str], stdin: &str) -> String {
        self.run_ok(BENCHMARK, args, stdin)
    }

    /// Runs `client` on piped `stdin`; asserts it exits 0 and returns its stdout.
    pub fn run_client(&self, stdin: &str) -> String {
        self.run_ok(CLIENT, &[], stdin)
    }

    fn run_ok(&self, program: &str, args: &[&str], stdin: &str) -> String {
        let connect = self.connect_args();
        let mut all: Vec<&str> = connect.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let out = run(program, &all, stdin);
        assert!(
            out.status.success(),
            "{program} {all:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            self.logs()
        );
        out.stdout
    }

    /// Starts a long-lived `client` whose stdin stays open (see [`Interactive`]).
    pub fn spawn_client(&self, args: &[&str]) -> Interactive {
        let connect = self.connect_args();
        let mut all: Vec<&str> = connect.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        Interactive::spawn(CLIENT, &all)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Its ports may serve another test's cluster next.
        let mine: Vec<String> = self.manager_addrs.iter().map(|a| a.to_string()).collect();
        if let Ok(mut clusters) = TLS_CLUSTERS.lock() {
            clusters.retain(|m| !mine.contains(m));
        }
        if thread::panicking() {
            eprintln!("cluster logs (in {}):", self.dir.path().display());
            eprintln!("{}", self.logs());
        }
        // Children are killed by their guards; servers first, then the manager.
        for s in &mut self.servers {
            drop(s.take());
        }
        for m in &mut self.managers {
            drop(m.take());
        }
    }
}

/// Asks the server at `addr` to run `GET key` on `partition`, as a client
/// would, over a fresh connection: `Some(true)` if it answers with a result
/// (only a leader that confirmed its quorum does), `Some(false)` if it
/// answers with an error (e.g. `NotLeader`), `None` without an answer within
/// `wait`.
pub fn probe_leader(addr: SocketAddr, partition: u64, key: &Key, wait: Duration) -> Option<bool> {
    let mut stream = Raw::connect_timeout(&addr, wait).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let msgs = [
        Msg::Hello { advertise: None },
        Msg::Execute {
            req: 1,
            session: rand::random::<u64>() | 1,
            seq: 1,
            sent_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            partition,
            ops: vec![Op::Get { key: key.clone() }],
        },
    ];
    for m in &msgs {
        stream
            .write_all(&encode_frame(&encode_msg(m).expect("encodable")))
            .ok()?;
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let mut header = [0u8; FRAME_HEADER_LEN];
        stream.read_exact(&mut header).ok()?;
        let header = FrameHeader::parse(header).ok()?;
        let mut payload = vec![0u8; header.payload_len()];
        stream.read_exact(&mut payload).ok()?;
        header.verify(&payload).ok()?;
        if let Ok(Msg::ExecuteReply { req: 1, result }) = decode_msg(&payload) {
            return Some(result.is_ok());
        }
    }
    None
}

/// A process fed line by line through a pipe kept open, with stdout read
/// line by line with a timeout.
pub struct Interactive {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
}

impl Interactive {
    pub fn spawn(program: &str, args: &[&str]) -> Interactive {
        let mut cmd = Command::new(program);
        if for_tls_cluster(args) {
            with_tls(&mut cmd, false);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        Interactive {
            stdin: child.stdin.take(),
            guard: ChildGuard {
                child,
                name: program.to_string(),
                stderr_path: None,
            },
            lines,
            stderr,
        }
    }

    /// Writes `text` (lines) to the process's stdin.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(text.as_bytes())
            .expect("write to the child");
        stdin.flush().expect("flush to the child");
    }

    /// The next stdout line, waiting at most [`PROCESS_TIMEOUT`].
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(PROCESS_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "no output line from {} within {PROCESS_TIMEOUT:?}: {e}",
                self.guard.name
            ),
        }
    }

    /// The next `n` stdout lines, each followed by `\n`.
    pub fn lines(&mut self, n: usize) -> String {
        (0..n).map(|_| self.line() + "\n").collect()
    }

    /// Closes stdin, waits (bounded) for the exit and returns the status and
    /// any stdout lines not read yet.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let status = wait_timeout(&mut self.guard.child, PROCESS_TIMEOUT);
        let Some(status) = status else {
            self.guard.kill();
            panic!("{} did not exit after its stdin closed", self.guard.name);
        };
        let mut rest = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push_str(&line);
            rest.push('\n');
        }
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        (status, rest, stderr)
    }
}
