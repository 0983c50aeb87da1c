//! `manager`: keeps the partition map and placement.
use clap::Parser;
use distkv::cli::LogFormat;
use distkv::manager::control::ControlConfig;
use distkv::manager::{run_manager, ManagerConfig, SplitThresholds};
use distkv::rt::tokio_rt::TokioRuntime;
use distkv::rt::FsDisk;
use distkv::storage::group_commit::GroupCommitConfig;
use distkv::storage::StorageConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv manager: keeps the partition map and placement"
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
    /// Log lines as human-readable text or as one JSON object per line (for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address to listen on for servers and clients.
    #[arg(long, default_value = "0.0.0.0:24000")]
    listen_addr: SocketAddr,
    /// The cluster's servers, comma-separated; server i has --node-id i.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddr>,
    /// Tables and their initial key space sizes: name=N,name=N (keys 0..N split over the servers).
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_table)]
    tables: Vec<(String, u64)>,
    /// Replicas per partition [default: 3, or the number of servers if fewer].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=7))]
    replicas: Option<u64>,
    /// A server not heard from for this long (ms) is declared dead, and its replicas are replaced
    /// on live servers (re-replication: learner, promoted once caught up, then the dead one
    /// removed).
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1000..=86_400_000))]
    dead_after_ms: u64,
    /// A partition holding more than this many MiB of data (values plus 8 bytes per key) is split
    /// in two at its middle key; 0: never by size. TiKV's default.
    #[arg(long, default_value_t = 96)]
    split_size_mb: u64,
    /// A partition holding more than this many keys is split in two at its middle key; 0: never
    /// by key count. TiKV's default.
    #[arg(long, default_value_t = 960_000)]
    split_keys: u64,
    /// Run several managers, so the control plane survives the loss of any one (of three): every
    /// manager's control-group address (Raft traffic between managers), comma-separated, the same
    /// list on each; manager i has --node-id i. One leads (plans moves, hands out maps); the
    /// others take over within seconds. Servers and clients list every manager's --listen-addr.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// This manager's position in --peers.
    #[arg(long, default_value_t = 0)]
    node_id: u64,
    /// With --peers: the directory for the control group's log and snapshots (always on disk:
    /// drains and removals survive a restart of every manager, and a manager that restarts
    /// never forgets what it acknowledged) [default: ./manager<NODE_ID>].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    tls: distkv::cli::TlsArgs,
}

fn parse_table(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not name=N (e.g. customers=100000)"))?;
    if !distkv::key::is_valid_table_name(name) {
        return Err(format!(
            "invalid table name '{name}': use letters and '_' only"
        ));
    }
    let n: u64 = n
        .parse()
        .map_err(|_| format!("key space of '{name}' must be a positive integer, got '{n}'"))?;
    if n == 0 {
        return Err(format!("key space of '{name}' must be at least 1"));
    }
    Ok((name.to_string(), n))
}

/// The control group this manager shares with its --peers, if any.
fn control_config(args: &Args) -> Option<ControlConfig> {
    if args.peers.is_empty() {
        if args.data_dir.is_some() || args.node_id != 0 {
            eprintln!(
                "error: --data-dir and --node-id need --peers (the managers' control group; \
                 one address for a single manager whose drains and removals survive restarts)"
            );
            std::process::exit(2);
        }
        return None;
    }
    if args.node_id as usize >= args.peers.len() {
        eprintln!(
            "error: --node-id {} is not a position in --peers ({} managers)",
            args.node_id,
            args.peers.len()
        );
        std::process::exit(2);
    }
    if let Some(bad) = args.peers.iter().find(|a| a.ip().is_unspecified()) {
        eprintln!("error: --peers lists {bad}, which the other managers cannot dial");
        std::process::exit(2);
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("manager{}", args.node_id)));
    if dir.exists() && !dir.is_dir() {
        eprintln!("error: --data-dir {} is not a directory", dir.display());
        std::process::exit(2);
    }
    // The control group's log is tiny: a few records a second.
    let segment = 4 * 1024 * 1024;
    Some(ControlConfig {
        node_id: args.node_id,
        peers: args.peers.clone(),
        storage: Some(StorageConfig {
            db_dir: dir.join("db"),
            log_dir: dir.join("log"),
            group_commit: GroupCommitConfig {
                batch_size: 256,
                batch_timeout: Duration::ZERO,
            },
            segment_bytes_max: segment,
            checkpoint_log_bytes: segment,
        }),
    })
}

fn main() {
    let args: Args = distkv::config::parse_args();
    args.tls.enable_or_exit();
    distkv::cli::init_logging_as("info", args.log_format);
    let replicas = args
        .replicas
        .map_or(3.min(args.servers.len()), |r| r as usize);
    let control = control_config(&args);
    let config = ManagerConfig {
        listen_addr: args.listen_addr,
        servers: args.servers,
        tables: args.tables,
        replicas,
        dead_after: Duration::from_millis(args.dead_after_ms),
        split: SplitThresholds {
            bytes: args.split_size_mb.saturating_mul(1024 * 1024),
            keys: args.split_keys,
        },
        control,
    };
    if let Err(e) = config.build_map() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Some(addr) = args.metrics_addr {
        let _guard = rt.enter();
        if let Err(e) = distkv::metrics::install(addr, "manager", args.node_id) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = rt.block_on(run_manager(TokioRuntime, FsDisk::new(), config)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
