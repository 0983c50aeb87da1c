//! `benchmark`: scripted requests on stdin (default), or a load generator (`load`).
use clap::{Parser, Subcommand};
use distkv::cli::single_op_output;
use distkv::client::Client;
use distkv::rt::tokio_rt::TokioRuntime;
use std::io::Write;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv benchmark: one reply per stdin request (default), or `load` for a load generator",
    after_help = "Requests, replies, errors and the history format: docs/protocol.md."
)]
struct Args {
    /// The manager to fetch the partition map from (stdin mode and `load`); with several
    /// (`manager --peers`), any or all of them, comma-separated.
    #[arg(long, default_value = "0.0.0.0:24000", value_delimiter = ',')]
    connect_addr: Vec<SocketAddr>,
    /// Zero-pad key numbers in replies to this many digits (0: canonical form).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=20))]
    key_len: u64,
    /// Deadline for each command, in milliseconds (stdin mode and `load`).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    tls: distkv::cli::TlsArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Generate load and report throughput and latency.
    Load(LoadCmd),
    /// Check a history file (from `load --history`) for linearizability / strict
    /// serializability; needs no cluster. Exit 0 ok, 1 violation, 2 bad input, 3 gave up.
    Check(distkv::checker::CheckArgs),
}

/// `load`'s flags: the cluster to reach, then the load itself. The cluster
/// flags may also come before `load` (`benchmark --connect-addr A load`);
/// `check` has none, as it reads a file and never connects.
#[derive(clap::Args, Debug)]
struct LoadCmd {
    /// The manager to fetch the partition map from [default: the --connect-addr given before `load`, or 0.0.0.0:24000].
    #[arg(long, value_name = "CONNECT_ADDR", value_delimiter = ',')]
    connect_addr: Option<Vec<SocketAddr>>,
    /// Deadline for each command, in milliseconds [default: the --timeout-ms given before `load`, or 5000].
    #[arg(long, value_name = "TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    load: distkv::bench::LoadArgs,
}

/// How long a finishing run waits for its last transactions' decisions to
/// be delivered (see `Client::settle`).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

fn main() {
    let args = Args::parse();
    args.tls.enable_or_exit();
    distkv::cli::init_logging("warn");
    // `check` reads a file and needs no cluster: run it before connecting.
    if let Some(Mode::Check(check)) = &args.mode {
        std::process::exit(distkv::checker::run_check_cli(check));
    }
    let (connect_addr, timeout_ms) = match &args.mode {
        Some(Mode::Load(cmd)) => (
            cmd.connect_addr
                .clone()
                .unwrap_or(args.connect_addr.clone()),
            cmd.timeout_ms.unwrap_or(args.timeout_ms),
        ),
        _ => (args.connect_addr.clone(), args.timeout_ms),
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let client = distkv::cli::connect_or_exit(&rt, &connect_addr, timeout_ms);
    match args.mode {
        Some(Mode::Load(cmd)) => {
            let code = rt.block_on(async {
                let code =
                    distkv::bench::run_load_cli(TokioRuntime, client.clone(), cmd.load).await;
                client.settle(SETTLE).await;
                code
            });
            std::process::exit(code);
        }
        Some(Mode::Check(_)) => unreachable!("handled before connecting"),
        None => {
            stdin_mode(&rt, client.clone(), args.key_len as usize);
            rt.block_on(client.settle(SETTLE));
        }
    }
}

/// One request per line; exactly one reply per request, in order.
fn stdin_mode(rt: &tokio::runtime::Runtime, client: Client<TokioRuntime>, key_len: usize) {
    let mut session = client.session();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in distkv::cli::input_lines(std::io::stdin().lock()) {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                let _ = writeln!(out, "ERROR {e}").and_then(|_| out.flush());
                continue;
            }
        };
        let request = line.trim();
        if request.is_empty() {
            continue;
        }
        if request.eq_ignore_ascii_case("STOP") {
            let _ = writeln!(out, "STOP");
            let _ = out.flush();
            return;
        }
        let text = match distkv::op::parse_op(request) {
            Ok(op) => {
                let outcome = rt.block_on(session.execute(vec![op.clone()]));
                single_op_output(&op, &outcome, key_len)
            }
            Err(e) => format!("ERROR {e}\n"),
        };
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return; // stdout closed
        }
    }
}
