//! Process faults for real-cluster nemesis tests: servers killed with
//! SIGKILL, paused with SIGSTOP and resumed with SIGCONT, restarted on the
//! same port with the same data directories; and a `benchmark load` run in
//! the background with its history written to a file.
//!
//! [`Nemesis`] owns the [`Cluster`] and remembers which servers it paused
//! and killed, so it can heal everything, and so that a panicking test never
//! leaves a stopped process behind: its `Drop` sends SIGCONT to every paused
//! server before the cluster's guards SIGKILL and reap them.

use super::{read_lossy, wait_timeout, with_tls, ChildGuard, Cluster, BENCHMARK};
use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Sends `signal` (a name such as `STOP`, `CONT`, `KILL`) to `pid` with
/// `kill(1)`; whether it was delivered.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Cluster {
    /// The process id of server `i`'s current incarnation, if it was started
    /// and has not been killed through the cluster.
    pub fn server_pid(&self, i: usize) -> Option<u32> {
        self.servers[i].as_ref().map(|g| g.child.id())
    }

    /// Starts `benchmark --connect-addr <manager> <args>` in the background,
    /// its stdout in `<name>.stdout` and its stderr in `<name>.stderr` in the
    /// cluster's directory (the stderr is part of [`Cluster::logs`]). The
    /// process is killed when the returned [`Background`] is dropped.
    pub fn spawn_benchmark(&mut self, name: &str, args: &[&str]) -> Background {
        let stdout_path = self.dir.path().join(format!("{name}.stdout"));
        let stderr_path = self
            .dir
            .path()
            .join(format!("{name}.{}.stderr", self.log_files.len()));
        self.log_files.push((name.to_string(), stderr_path.clone()));
        let child = with_tls(&mut Command::new(BENCHMARK), false)
            .args(self.connect_args())
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create a stdout file"))
            .stderr(File::create(&stderr_path).expect("create a log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BENCHMARK}: {e}"));
        Background {
            guard: ChildGuard {
                child,
                name: name.to_string(),
                stderr_path: Some(stderr_path),
            },
            stdout_path,
        }
    }
}

/// A background process (see [`Cluster::spawn_benchmark`]).
pub struct Background {
    pub guard: ChildGuard,
    pub stdout_path: PathBuf,
}

impl Background {
    /// Waits at most `limit` for the exit; kills the process and panics
    /// (with its stderr) if it does not end in time. Returns the status and
    /// the stdout.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        match wait_timeout(&mut self.guard.child, limit) {
            Some(status) => (status, read_lossy(&self.stdout_path)),
            None => {
                self.guard.kill();
                panic!(
                    "{} did not finish within {limit:?}\n--- stderr\n{}",
                    self.guard.name,
                    self.guard.stderr()
                );
            }
        }
    }
}

/// Faults injected into a [`Cluster`]'s servers, with a timestamped log of
/// every fault (for failure messages: which server was down when).
pub struct Nemesis {
    pub cluster: Cluster,
    /// Prefixes every logged event (tests run in parallel).
    label: String,
    paused: BTreeSet<usize>,
    killed: BTreeSet<usize>,
    start: Instant,
    events: Vec<String>,
}

impl Nemesis {
    /// Faults for `cluster`, logged as `label`; event times are counted
    /// from `start`.
    pub fn new(label: &str, cluster: Cluster, start: Instant) -> Nemesis {
        Nemesis {
            cluster,
            label: label.to_string(),
            paused: BTreeSet::new(),
            killed: BTreeSet::new(),
            start,
            events: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>7.3}s {what}", self.start.elapsed().as_secs_f64());
        eprintln!("nemesis {}: {line}", self.label);
        self.events.push(line);
    }

    /// Records a line in the fault log (e.g. "healed").
    pub fn mark(&mut self, what: &str) {
        self.note(what.to_string());
    }

    /// Servers neither paused nor killed.
    pub fn healthy(&self) -> Vec<usize> {
        (0..self.cluster.server_addrs.len())
            .filter(|i| !self.paused.contains(i) && !self.killed.contains(i))
            .collect()
    }

    pub fn paused(&self) -> Vec<usize> {
        self.paused.iter().copied().collect()
    }

    pub fn killed(&self) -> Vec<usize> {
        self.killed.iter().copied().collect()
    }

    /// kill -9 server `i` (resuming it first if it was paused: a stopped
    /// process dies of SIGKILL too, but it must not stay stopped if the
    /// kill fails) and reap it.
    pub fn kill(&mut self, i: usize) {
        if self.paused.remove(&i) {
            if let Some(pid) = self.cluster.server_pid(i) {
                send_signal(pid, "CONT");
            }
        }
        let pid = self.cluster.server_pid(i);
        self.cluster.kill_server(i);
        self.killed.insert(i);
        self.note(format!("SIGKILL server{i} (pid {pid:?})"));
    }

    /// SIGSTOP server `i`.
    pub fn pause(&mut self, i: usize) {
        let pid = self.cluster.server_pid(i).expect("a running server");
        assert!(send_signal(pid, "STOP"), "SIGSTOP to server{i} failed");
        self.paused.insert(i);
        self.note(format!("SIGSTOP server{i} (pid {pid})"));
    }

    /// SIGCONT server `i` (after [`Nemesis::pause`]).
    pub fn resume(&mut self, i: usize) {
        if self.paused.remove(&i) {
            let pid = self.cluster.server_pid(i).expect("a paused server");
            send_signal(pid, "CONT");
            self.note(format!("SIGCONT server{i} (pid {pid})"));
        }
    }

    /// Starts killed server `i` again, same port and data directories,
    /// without waiting for it.
    pub fn restart(&mut self, i: usize) {
        if self.killed.remove(&i) {
            self.cluster.spawn_server(i);
            let pid = self.cluster.server_pid(i);
            self.note(format!("restart server{i} (pid {pid:?})"));
        }
    }

    /// Resumes every paused server and restarts every killed one.
    pub fn heal(&mut self) {
        for i in self.paused() {
            self.resume(i);
        }
        for i in self.killed() {
            self.restart(i);
        }
    }

    /// The fault log so far, one event per line.
    pub fn events(&self) -> String {
        self.events.join("\n")
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        // SIGCONT first: the cluster's guards then SIGKILL and reap.
        for &i in &self.paused {
            if let Some(pid) = self.cluster.server_pid(i) {
                send_signal(pid, "CONT");
            }
        }
        if std::thread::panicking() {
            eprintln!("nemesis events:\n{}", self.events());
        }
    }
}
