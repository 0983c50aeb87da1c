//! `client`: the interactive terminal.
use clap::Parser;
use distkv::cli::{command_output, single_op_output, Action, Repl, HELP};
use distkv::client::Session;
use distkv::rt::tokio_rt::TokioRuntime;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv client: an interactive terminal (scriptable when stdin is not a terminal)",
    after_help = "Type 'help' inside for the commands. The command language, every reply and error, \
                  and what each error says about a command's effect: docs/protocol.md."
)]
struct Args {
    /// The manager to fetch the partition map from; with several (`manager --peers`), any or all
    /// of them, comma-separated.
    #[arg(long, default_value = "0.0.0.0:24000", value_delimiter = ',')]
    connect_addr: Vec<SocketAddr>,
    /// Deadline for each command, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    #[command(flatten)]
    tls: distkv::cli::TlsArgs,
}

struct Terminal {
    rt: tokio::runtime::Runtime,
    session: Session<TokioRuntime>,
    repl: Repl,
    timing: bool,
}

impl Terminal {
    /// Handles one line; returns false to exit.
    fn line(&mut self, line: &str, out: &mut impl Write) -> bool {
        let client = self.session.client().clone();
        let check = |op: &distkv::op::Op| {
            client
                .check(std::slice::from_ref(op))
                .map_err(|e| e.to_string())
        };
        let text = match self.repl.handle(line, check) {
            Action::Exit => return false,
            Action::Nothing => return true,
            Action::Print(text) => text,
            Action::Clear => "\x1b[2J\x1b[H".to_string(),
            Action::ToggleTime => {
                self.timing = !self.timing;
                format!("timing {}\n", if self.timing { "on" } else { "off" })
            }
            Action::Run { ops, bare } => {
                let started = Instant::now();
                let outcome = self.rt.block_on(self.session.execute(ops.clone()));
                let elapsed = started.elapsed();
                let mut text = if bare {
                    single_op_output(&ops[0], &outcome, 0)
                } else {
                    command_output(&ops, &outcome, 0)
                };
                if self.timing {
                    text.push_str(&format!("({:.3} ms)\n", elapsed.as_secs_f64() * 1e3));
                }
                text
            }
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        true
    }
}

/// How long the program waits, when it ends, for its last transactions'
/// decisions to be delivered (see `Client::settle`).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

fn main() {
    let args = Args::parse();
    args.tls.enable_or_exit();
    distkv::cli::init_logging("warn");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let client = distkv::cli::connect_or_exit(&rt, &args.connect_addr, args.timeout_ms);
    let mut term = Terminal {
        session: client.session(),
        rt,
        repl: Repl::new(),
        timing: false,
    };
    let stdout = std::io::stdout();
    if !std::io::stdin().is_terminal() {
        // Scripted: no prompt, no banner, only replies.
        let mut out = stdout.lock();
        for line in distkv::cli::input_lines(std::io::stdin().lock()) {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    let _ = writeln!(out, "ERROR {e}").and_then(|_| out.flush());
                    continue;
                }
            };
            if !term.line(&line, &mut out) {
                break;
            }
        }
        term.rt.block_on(client.settle(SETTLE));
        return;
    }
    let map = client.map();
    println!(
        "distkv client: connected to {} ({} tables, {} partitions, {} servers). Type 'help'.",
        args.connect_addr
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        map.tables.len(),
        map.partitions.len(),
        map.servers.len()
    );
    let _ = HELP;
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot open the terminal: {e}");
            std::process::exit(1);
        }
    };
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".distkv_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    loop {
        let prompt = match term.repl.building() {
            Some(n) => format!("distkv(cmd, {n} ops)> "),
            None => "distkv> ".to_string(),
        };
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !term.line(&line, &mut stdout.lock()) {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break, // Ctrl-D or a closed terminal
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    term.rt.block_on(client.settle(SETTLE));
}
