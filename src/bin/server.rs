//! `server`: stores partitions and serves commands on them.
use clap::Parser;
use distkv::rt::tokio_rt::TokioRuntime;
use distkv::server::{run_server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv server: stores partitions and serves commands on them"
)]
struct Args {
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
    /// Directory for data (snapshots/checkpoints).
    #[arg(long)]
    db_path: Option<PathBuf>,
    /// Directory for the write-ahead log, e.g. log<NODE_ID>.
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// The manager to register with.
    #[arg(long, default_value = "0.0.0.0:24000")]
    manager_addr: SocketAddr,
    /// Keep data on disk and acknowledge writes only after fsync. Not available yet.
    #[arg(long)]
    persistence: bool,
    /// Group commit: flush the log when this many writes are pending (count).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_size: u64,
    /// Group commit: flush the log at most this many milliseconds after the first pending write.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    batch_timeout: u64,
    /// How often to re-register with the manager, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    heartbeat_ms: u64,
}

fn main() {
    let args = Args::parse();
    distkv::cli::init_logging("info");
    if args.persistence {
        eprintln!(
            "error: --persistence is not available yet in this build (durable storage is the \
             next milestone, see README \"Status\"); run without it to keep data in memory"
        );
        std::process::exit(2);
    }
    let advertise_addr = args
        .advertise_addr
        .unwrap_or_else(|| distkv::cli::dialable_addr(args.listen_addr, args.manager_addr));
    if advertise_addr.ip().is_unspecified() {
        eprintln!(
            "error: --advertise-addr {advertise_addr} is not dialable; give this host's address"
        );
        std::process::exit(2);
    }
    let config = ServerConfig {
        node_id: args.node_id,
        listen_addr: args.listen_addr,
        advertise_addr,
        manager_addr: args.manager_addr,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        db_path: args.db_path,
        log_path: args.log_path,
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(run_server(TokioRuntime, config)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
