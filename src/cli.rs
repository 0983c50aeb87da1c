//! Text front ends shared by the `client` and `benchmark` binaries: how
//! outcomes print, and the interactive command state machine (`cmd` / `op` /
//! `done`), kept free of IO so it is unit-tested directly.

use crate::client::ClientError;
use crate::op::{format_check_mismatch, format_reply, parse_op, parse_op_words, Op, OpResult};

/// The reply lines for a command's results, in operation order, each line
/// ending in `\n`.
pub fn reply_lines(ops: &[Op], results: &[OpResult], key_len: usize) -> String {
    let mut out = String::new();
    for (op, result) in ops.iter().zip(results) {
        out.push_str(&format_reply(op, result, key_len));
        out.push('\n');
    }
    out
}

/// The one line for a failed one-operation command: `ERROR ...`, or the
/// mismatch reply of a CHECK that did not hold (`CHECK <key> mismatch
/// <actual>`: it is that operation's reply, not an error).
pub fn error_line(error: &ClientError, key_len: usize) -> String {
    match error {
        ClientError::CheckFailed { key, actual, .. } => {
            format!(
                "{}\n",
                format_check_mismatch(key, actual.as_deref(), key_len)
            )
        }
        _ => format!("ERROR {error}\n"),
    }
}

/// What a one-operation request line prints (benchmark stdin mode and bare
/// operations in the client): the reply, or one `ERROR` line.
pub fn single_op_output(
    op: &Op,
    outcome: &Result<Vec<OpResult>, ClientError>,
    key_len: usize,
) -> String {
    match outcome {
        Ok(results) => reply_lines(std::slice::from_ref(op), results, key_len),
        Err(e) => error_line(e, key_len),
    }
}

/// What `done` prints: the replies and `COMMITTED`, or why not.
///
/// - refused before running (bad operation, unknown table): `ABORTED op N: reason`
/// - refused by a server, or unavailable: nothing applied: `ABORTED reason`
/// - a CHECK did not hold: its mismatch reply, then `ABORTED check failed: op N`
///   (N numbered like `ABORTED op N`, from 1)
/// - outcome unknown: an `ERROR` line (neither word would be true)
pub fn command_output(
    ops: &[Op],
    outcome: &Result<Vec<OpResult>, ClientError>,
    key_len: usize,
) -> String {
    match outcome {
        Ok(results) => {
            let mut out = reply_lines(ops, results, key_len);
            out.push_str("COMMITTED\n");
            out
        }
        Err(ClientError::Invalid {
            index: Some(i),
            error,
        }) => {
            format!("ABORTED op {}: {error}\n", i + 1)
        }
        Err(
            e @ (ClientError::Invalid { .. }
            | ClientError::Rejected(_)
            | ClientError::Unavailable(_)),
        ) => {
            format!("ABORTED {e}\n")
        }
        Err(e @ ClientError::CheckFailed { .. }) => {
            format!("{}ABORTED {e}\n", error_line(e, key_len))
        }
        Err(e @ ClientError::UnknownOutcome(_)) => error_line(e, key_len),
    }
}

/// What the client should do with one input line.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Print this text (already newline-terminated), nothing else.
    Print(String),
    /// Run these operations as one command; `bare` is a one-op line outside
    /// `cmd` (prints like the benchmark: the reply only).
    Run {
        ops: Vec<Op>,
        bare: bool,
    },
    /// Toggle latency printing, and say so.
    ToggleTime,
    Clear,
    Exit,
    Nothing,
}

/// The `cmd` / `op` / `done` state machine.
#[derive(Debug, Default)]
pub struct Repl {
    /// Operations of the command being built, if inside `cmd`.
    building: Option<Vec<Op>>,
}

pub const HELP: &str = "\
commands:
  cmd                      start a multi-operation command
  op <OPERATION> <args>    add an operation to it
  done                     run the command as one transaction
  abort                    drop the command being built
  PUT k v | GET k | SWAP k v | DELETE k | SCAN a b | CHECK k v
                           run one operation on its own (CHECK k v: does k
                           hold v, or is it absent for v = null? in a
                           command, one that does not aborts it whole)
  time                     toggle printing each command's latency
  clear                    clear the screen
  help                     this text
  exit | quit              leave
";

impl Repl {
    pub fn new() -> Repl {
        Repl::default()
    }

    /// Whether a `cmd` is open (for the prompt).
    pub fn building(&self) -> Option<usize> {
        self.building.as_ref().map(Vec::len)
    }

    /// Interprets one line. `check` validates an operation against the
    /// cluster (e.g. unknown table) as soon as it is added.
    pub fn handle(&mut self, line: &str, check: impl Fn(&Op) -> Result<(), String>) -> Action {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = words.first() else {
            return Action::Nothing;
        };
        match first.to_ascii_lowercase().as_str() {
            "exit" | "quit" => Action::Exit,
            "clear" => Action::Clear,
            "time" => Action::ToggleTime,
            "help" => Action::Print(HELP.to_string()),
            "cmd" => {
                if words.len() != 1 {
                    return Action::Print("ERROR cmd takes no arguments\n".into());
                }
                if self.building.is_some() {
                    return Action::Print(
                        "ERROR a command is already open: add operations with 'op', run it with 'done' or drop it with 'abort'\n".into(),
                    );
                }
                self.building = Some(Vec::new());
                Action::Nothing
            }
            "op" => {
                let Some(ops) = self.building.as_mut() else {
                    return Action::Print(
                        "ERROR 'op' outside a command: start one with 'cmd'\n".into(),
                    );
                };
                match parse_op_words(&words[1..])
                    .map_err(|e| e.to_string())
                    .and_then(|op| {
                        check(&op)?;
                        Ok(op)
                    }) {
                    Ok(op) => {
                        ops.push(op);
                        Action::Nothing
                    }
                    Err(e) => Action::Print(format!("ERROR {e}\n")),
                }
            }
            "done" => match self.building.take() {
                Some(ops) => Action::Run { ops, bare: false },
                None => {
                    Action::Print("ERROR 'done' outside a command: start one with 'cmd'\n".into())
                }
            },
            "abort" => match self.building.take() {
                Some(_) => Action::Print("ABORTED by user\n".into()),
                None => Action::Print("ERROR no command to abort\n".into()),
            },
            _ => {
                if self.building.is_some() {
                    return Action::Print(
                        "ERROR inside a command, add operations with 'op <OPERATION> <args>' and finish with 'done'\n".into(),
                    );
                }
                match parse_op(line).map_err(|e| e.to_string()).and_then(|op| {
                    check(&op)?;
                    Ok(op)
                }) {
                    Ok(op) => Action::Run {
                        ops: vec![op],
                        bare: true,
                    },
                    Err(e) => Action::Print(format!("ERROR {e}\n")),
                }
            }
        }
    }
}

/// Lines of `input`, split on `\n` with a trailing `\r` dropped. A line that
/// is not UTF-8 comes back as `Err` (to be answered with an `ERROR` line)
/// instead of ending the input. A read error ends it.
pub fn input_lines(input: impl std::io::BufRead) -> impl Iterator<Item = Result<String, String>> {
    input.split(b'\n').map_while(Result::ok).map(|mut line| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| "input line is not valid UTF-8".to_string())
    })
}

/// Connects a front end to the cluster through the managers at `addrs` (one,
/// or every manager of a replicated control plane), with a per-command
/// deadline of `timeout_ms`; exits with a one-line reason if no manager can
/// be reached.
pub fn connect_or_exit(
    rt: &tokio::runtime::Runtime,
    addrs: &[std::net::SocketAddr],
    timeout_ms: u64,
) -> crate::client::Client<crate::rt::tokio_rt::TokioRuntime> {
    let mut config = crate::client::ClientConfig::with_managers(addrs.to_vec());
    config.command_timeout = std::time::Duration::from_millis(timeout_ms);
    match rt.block_on(crate::client::Client::connect(
        crate::rt::tokio_rt::TokioRuntime,
        config,
    )) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: cannot connect to the cluster: {e}");
            std::process::exit(1);
        }
    }
}

/// A password from the first line of a file (`server --resp-password-file`).
pub fn read_password(path: &std::path::Path) -> Result<std::sync::Arc<[u8]>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!(
            "the password file {} is empty (its first line is the password)",
            path.display()
        ));
    }
    Ok(line.into())
}

/// TLS flags, the same on every binary (README "Security").
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Mutual TLS on every connection: the cluster's CA certificate (PEM). Only peers holding a
    /// certificate signed by it can connect, in either direction. Needs --tls-cert and
    /// --tls-key; `admin gen-certs --out DIR` makes a test CA and certificates.
    #[arg(long, value_name = "FILE", global = true, env = "DISTKV_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This process's certificate (PEM, signed by --tls-ca's CA).
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        env = "DISTKV_TLS_CERT",
        requires = "tls_ca"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// This process's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        env = "DISTKV_TLS_KEY",
        requires = "tls_ca"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// Turns TLS on if asked; on a bad file says why and exits 2.
    pub fn enable_or_exit(&self) {
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            if let Err(e) = crate::rt::tls::enable(ca, cert, key) {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
}

/// Logs go to stderr (never stdout, which carries replies), filtered by
/// `RUST_LOG` or `default` (e.g. `"info"`).
pub fn init_logging(default: &str) {
    init_logging_as(default, LogFormat::Text);
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`
    /// with `message` and the event's fields, and the enclosing `span`s),
    /// for log shippers.
    Json,
}

/// [`init_logging`] in the given format. `RUST_LOG` overrides the level.
pub fn init_logging_as(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// The address others should dial to reach a process listening on `listen`:
/// `listen` itself if it names an IP; otherwise the local IP the OS would use
/// to reach `peer` (no packet is sent), or loopback. Never `0.0.0.0`.
pub fn dialable_addr(
    listen: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let via_route = || -> Option<IpAddr> {
        let target = if peer.ip().is_unspecified() {
            return None;
        } else {
            peer
        };
        let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).ok()?;
        socket.connect(target).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    SocketAddr::new(
        via_route().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        listen.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::OpError;

    fn ok(_: &Op) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn cmd_op_done_builds_one_command_in_order() {
        let mut r = Repl::new();
        assert_eq!(r.handle("cmd", ok), Action::Nothing);
        assert_eq!(r.handle("op PUT t1 a", ok), Action::Nothing);
        assert_eq!(r.handle("op GET t1", ok), Action::Nothing);
        assert_eq!(r.building(), Some(2));
        let Action::Run { ops, bare: false } = r.handle("done", ok) else {
            panic!("done must run the command");
        };
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].name(), "PUT");
        assert_eq!(r.building(), None);
    }

    #[test]
    fn a_bad_op_is_reported_and_not_added() {
        let mut r = Repl::new();
        r.handle("cmd", ok);
        assert!(
            matches!(r.handle("op FROB t1", ok), Action::Print(s) if s.starts_with("ERROR unknown operation"))
        );
        let unknown = |_: &Op| Err("unknown table 'zz'".to_string());
        assert_eq!(
            r.handle("op GET zz1", unknown),
            Action::Print("ERROR unknown table 'zz'\n".into())
        );
        assert_eq!(r.building(), Some(0));
    }

    #[test]
    fn bare_operations_and_keywords() {
        let mut r = Repl::new();
        assert!(matches!(
            r.handle("GET t1", ok),
            Action::Run { bare: true, .. }
        ));
        assert_eq!(r.handle("", ok), Action::Nothing);
        assert_eq!(r.handle("time", ok), Action::ToggleTime);
        assert_eq!(r.handle("QUIT", ok), Action::Exit);
        assert!(matches!(r.handle("done", ok), Action::Print(s) if s.starts_with("ERROR")));
        assert!(
            matches!(r.handle("PUT t1", ok), Action::Print(s) if s.starts_with("ERROR wrong number"))
        );
    }

    #[test]
    fn command_outcomes_print_as_documented() {
        let ops = vec![parse_op("PUT t1 a").unwrap(), parse_op("GET t1").unwrap()];
        let results = vec![
            OpResult::Put { found: false },
            OpResult::Get(Some(b"a".to_vec())),
        ];
        assert_eq!(
            command_output(&ops, &Ok(results), 0),
            "PUT t1 not_found\nGET t1 a\nCOMMITTED\n"
        );
        let invalid = Err(ClientError::Invalid {
            index: Some(1),
            error: OpError::UnknownTable("zz".into()),
        });
        assert_eq!(
            command_output(&ops, &invalid, 0),
            "ABORTED op 2: unknown table 'zz'\n"
        );
        let unknown = Err(ClientError::UnknownOutcome("no reply".into()));
        assert_eq!(
            command_output(&ops, &unknown, 0),
            "ERROR unknown outcome: no reply\n"
        );
        let check_failed = Err(ClientError::CheckFailed {
            index: 2,
            key: crate::key::Key::new("t", 1),
            actual: Some(b"a".to_vec()),
        });
        let mut guarded = ops.clone();
        guarded.push(parse_op("CHECK t1 b").unwrap());
        assert_eq!(
            command_output(&guarded, &check_failed, 0),
            "CHECK t1 mismatch a\nABORTED check failed: op 3\n"
        );
        assert_eq!(
            single_op_output(&guarded[2], &check_failed, 2),
            "CHECK t01 mismatch a\n"
        );
        let results = vec![OpResult::Check];
        assert_eq!(
            single_op_output(&guarded[2], &Ok(results), 0),
            "CHECK t1 ok\n"
        );
        let unavailable = Err(ClientError::Unavailable("no server".into()));
        assert_eq!(
            single_op_output(&ops[1], &unavailable, 0),
            "ERROR unavailable: no server\n"
        );
    }
}
