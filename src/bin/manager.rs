//! `manager`: keeps the partition map and placement.
use clap::Parser;
use distkv::manager::{run_manager, ManagerConfig, SplitThresholds};
use distkv::rt::tokio_rt::TokioRuntime;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv manager: keeps the partition map and placement"
)]
struct Args {
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

fn main() {
    let args = Args::parse();
    distkv::cli::init_logging("info");
    let replicas = args
        .replicas
        .map_or(3.min(args.servers.len()), |r| r as usize);
    let config = ManagerConfig {
        listen_addr: args.listen_addr,
        servers: args.servers,
        tables: args.tables,
        replicas,
        dead_after: std::time::Duration::from_millis(args.dead_after_ms),
        split: SplitThresholds {
            bytes: args.split_size_mb.saturating_mul(1024 * 1024),
            keys: args.split_keys,
        },
    };
    if let Err(e) = config.build_map() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(run_manager(TokioRuntime, config)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
