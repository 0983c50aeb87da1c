//! `server`: stores partitions and serves commands on them.
use clap::Parser;
use distkv::cli::LogFormat;
use distkv::rt::tokio_rt::TokioRuntime;
use distkv::rt::FsDisk;
use distkv::server::{run_server_until, RaftTuning, ServerConfig};
use distkv::storage::group_commit::GroupCommitConfig;
use distkv::storage::wal::SEGMENT_BYTES_DEFAULT;
use distkv::storage::StorageConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv server: stores partitions and serves commands on them"
)]
struct Args {
    /// Read settings from this TOML file: each key is a flag's long name (`listen-addr` or
    /// `listen_addr`), flags given here override it, unknown keys are errors. See the README's
    /// "Configuration files".
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 0.0.0.0:9100; any path, usually
    /// /metrics). Off by default. README "Metrics" lists what it serves.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Also speak the Redis protocol (RESP2) on this address, e.g. 0.0.0.0:6379: redis-cli and
    /// Redis client libraries can then GET, SET, MGET, MSET, DEL, MULTI/EXEC ... distkv keys
    /// (customers42) through this server, atomically across partitions (docs/protocol.md).
    #[arg(long, value_name = "ADDR")]
    resp_addr: Option<SocketAddr>,
    /// Require Redis clients to `AUTH <password>` first (like Redis's requirepass), with the
    /// password read from this file (its first line). With TLS on (--tls-ca ...), the Redis port
    /// is mutual TLS too.
    #[arg(long, value_name = "FILE", requires = "resp_addr")]
    resp_password_file: Option<std::path::PathBuf>,
    /// Log lines as human-readable text or as one JSON object per line (for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// This server's id, unique in the cluster: its position in the manager's --servers list.
    #[arg(long, default_value_t = 0)]
    node_id: u64,
    /// Address to listen on for clients, peers and the manager.
    #[arg(long, default_value = "0.0.0.0:23000")]
    listen_addr: SocketAddr,
    /// Address others should dial to reach this server [default: --listen-addr, or,
    /// if that is 0.0.0.0, this host's address on the route to the manager].
    #[arg(long)]
    advertise_addr: Option<SocketAddr>,
    /// Directory for data (snapshots) with --persistence [default: ./db<NODE_ID>].
    #[arg(long)]
    db_path: Option<PathBuf>,
    /// Directory for the write-ahead log with --persistence [default: ./log<NODE_ID>].
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// The manager to register with; with several managers (`manager --peers`), every one,
    /// comma-separated (each gets the heartbeats; the leading one answers).
    #[arg(long, default_value = "0.0.0.0:24000", value_delimiter = ',')]
    manager_addr: Vec<SocketAddr>,
    /// Join a running cluster: the manager adds this server (a --node-id its --servers does not
    /// list) and moves a share of the replicas and leaderships to it. Without it, a node id the
    /// manager does not know is refused (a typo must not grow the cluster).
    #[arg(long)]
    join: bool,
    /// Keep data on disk (write-ahead log + snapshots): a write is acknowledged only after
    /// it is fsynced on a majority of its partition's replicas. Without it, data lives in
    /// memory only (still replicated).
    #[arg(long)]
    persistence: bool,
    /// Group commit: flush (fsync) the log once this many writes are pending (count).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_size: u64,
    /// Group commit: flush the log at most this many milliseconds after the first pending
    /// write (fractions allowed, e.g. 0.5). While one fsync runs, the next batch fills anyway.
    #[arg(long, default_value_t = 0.0, value_parser = parse_batch_timeout, allow_negative_numbers = true)]
    batch_timeout: f64,
    /// Take snapshots and drop the log behind them after this many MiB of log.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    checkpoint_log_mb: u64,
    /// How often to re-register with the manager, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    heartbeat_ms: u64,
    /// The Raft tick, in milliseconds: one timer drives every Raft group on the server.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    raft_tick_ms: u64,
    /// Ticks without hearing a leader before a replica starts an election (randomized
    /// between this and twice this). Default: 10 ticks = 0.5-1 s.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..=10_000))]
    election_ticks: u32,
    /// Ticks between a leader's heartbeats; must be below --election-ticks.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    heartbeat_ticks: u32,
    /// Seconds a client session may stay idle (in log time: the leaders'
    /// clocks as stamped in the log) before its partitions forget it. A
    /// command that reaches a partition more than half this after the
    /// client first sent it, and whose session the partition forgot, is
    /// refused. Keep it the same on every server, and at least twice the
    /// clients' command deadline (5 s by default).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(2..=604_800))]
    session_ttl_s: u64,
    /// Applied entries each Raft group keeps in memory before it drops the older half
    /// (a follower behind the dropped part gets a snapshot instead).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    compact_entries: u64,
    #[command(flatten)]
    tls: distkv::cli::TlsArgs,
}

fn parse_batch_timeout(s: &str) -> Result<f64, String> {
    let ms: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of milliseconds"))?;
    if !(0.0..=10_000.0).contains(&ms) {
        return Err(format!("{ms} ms is outside 0..=10000"));
    }
    Ok(ms)
}

impl Args {
    fn batch_timeout_us(&self) -> u64 {
        (self.batch_timeout * 1000.0).round() as u64
    }
}

fn main() {
    let args: Args = distkv::config::parse_args();
    args.tls.enable_or_exit();
    distkv::cli::init_logging_as("info", args.log_format);
    let advertise_addr = args
        .advertise_addr
        .unwrap_or_else(|| distkv::cli::dialable_addr(args.listen_addr, args.manager_addr[0]));
    if advertise_addr.ip().is_unspecified() {
        eprintln!(
            "error: --advertise-addr {advertise_addr} is not dialable; give this host's address"
        );
        std::process::exit(2);
    }
    if args.persistence {
        for (flag, dir) in [("--db-path", &args.db_path), ("--log-path", &args.log_path)] {
            if let Some(dir) = dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
                eprintln!("error: {flag} {} is not a directory", dir.display());
                std::process::exit(2);
            }
        }
    }
    if args.heartbeat_ticks >= args.election_ticks {
        eprintln!(
            "error: --heartbeat-ticks {} must be below --election-ticks {}",
            args.heartbeat_ticks, args.election_ticks
        );
        std::process::exit(2);
    }
    let batch_timeout = Duration::from_micros(args.batch_timeout_us());
    let config = ServerConfig {
        node_id: args.node_id,
        listen_addr: args.listen_addr,
        advertise_addr,
        managers: args.manager_addr.clone(),
        fixed_map: None,
        join: args.join,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        storage: args.persistence.then(|| StorageConfig {
            db_dir: args
                .db_path
                .unwrap_or_else(|| PathBuf::from(format!("db{}", args.node_id))),
            log_dir: args
                .log_path
                .unwrap_or_else(|| PathBuf::from(format!("log{}", args.node_id))),
            group_commit: GroupCommitConfig {
                batch_size: args.batch_size as usize,
                batch_timeout,
            },
            // A checkpoint can only delete whole segments: keep them no
            // larger than the checkpoint interval, or a small
            // --checkpoint-log-mb never frees any log.
            segment_bytes_max: SEGMENT_BYTES_DEFAULT.min(args.checkpoint_log_mb * 1024 * 1024),
            checkpoint_log_bytes: args.checkpoint_log_mb * 1024 * 1024,
        }),
        raft_tick: Duration::from_millis(args.raft_tick_ms),
        raft: RaftTuning {
            election_ticks: args.election_ticks,
            heartbeat_ticks: args.heartbeat_ticks,
            session_ttl: Duration::from_secs(args.session_ttl_s),
            compact_entries: args.compact_entries,
        },
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Some(addr) = args.metrics_addr {
        let _guard = rt.enter();
        if let Err(e) = distkv::metrics::install(addr, "server", args.node_id) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    if let Some(addr) = args.resp_addr {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| {
                eprintln!("error: cannot listen for the Redis protocol on {addr}: {e}");
                std::process::exit(1);
            });
        let password =
            args.resp_password_file
                .as_deref()
                .map(|path| match distkv::cli::read_password(path) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("error: {e}");
                        std::process::exit(1);
                    }
                });
        tracing::info!(%addr, tls = distkv::rt::tls::get().is_some(), auth = password.is_some(), "serving the Redis protocol");
        rt.spawn(distkv::resp::serve(
            listener,
            args.manager_addr.clone(),
            password,
        ));
    }
    // SIGTERM or Ctrl-C: hand the leaderships off and flush the log, then exit 0
    // (a second one, or SIGKILL, ends it at once). Registered now, so a signal
    // during recovery is not lost.
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).expect("a SIGTERM handler"),
            signal(SignalKind::interrupt()).expect("a SIGINT handler"),
        )
    };
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            std::process::exit(143);
        });
    };
    if let Err(e) = rt.block_on(run_server_until(TokioRuntime, FsDisk::new(), config, stop)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
