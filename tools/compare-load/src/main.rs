//! `compare-load`: the closed-loop load of distkv's `benchmark load
//! --workload w|c`, against etcd's v3 gRPC API or a Redis server, so that
//! `scripts/compare.sh` measures every store the same way: N clients, each
//! with one request outstanding, printable values (100 bytes by default) over
//! keys `key0..key{N-1}` picked uniformly, a warm-up that is not counted, then
//! a measured period. Gets on etcd are its default linearizable reads (a
//! ReadIndex round, like distkv's GET); on Redis a plain GET to its one
//! node. It prints the same JSON report fields as `benchmark load --json`
//! (`throughput_ops_per_s`, `latency_ms.{p50,p99,p999,max,mean}`, `ok`,
//! `failed`, `config`).

use clap::{Parser, ValueEnum};
use etcd_client::KvClient;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    /// 100% put.
    W,
    /// 100% get (linearizable).
    C,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Store {
    /// etcd v3 over gRPC.
    Etcd,
    /// Redis over RESP (SET / GET).
    Redis,
}

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Closed-loop put/get load against etcd v3 or Redis, reported like distkv's `benchmark load --json`")]
struct Args {
    #[arg(long, value_enum, default_value_t = Store::Etcd)]
    store: Store,
    /// etcd client URLs, comma-separated (requests are spread over them; etcd
    /// forwards writes to its leader), or the Redis address (host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// Concurrent sequential clients, each with one request outstanding.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// etcd: gRPC connections the clients share (default: one per client,
    /// at most 16). Redis: always one connection per client.
    #[arg(long)]
    conns: Option<usize>,
    #[arg(long, value_enum, default_value_t = Workload::W)]
    workload: Workload,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    #[arg(long, default_value_t = 8)]
    duration_s: u64,
    #[arg(long, default_value_t = 1)]
    warmup_s: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Deadline per request, in milliseconds (a request past it counts as failed).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print only the JSON report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct Report {
    store: Store,
    config: Args,
    elapsed_s: f64,
    ok: u64,
    failed: u64,
    throughput_ops_per_s: f64,
    latency_ms: Latency,
}

/// One client's tally of the measured period.
struct Tally {
    ok: u64,
    failed: u64,
    latency_us: Histogram<u64>,
}

/// One client's connection.
enum Conn {
    Etcd(KvClient),
    Redis(redis::aio::MultiplexedConnection),
}

impl Conn {
    async fn put(&mut self, key: String, value: Vec<u8>) -> bool {
        match self {
            Conn::Etcd(kv) => kv.put(key, value, None).await.is_ok(),
            Conn::Redis(c) => redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(c)
                .await
                .is_ok(),
        }
    }

    async fn get(&mut self, key: String) -> bool {
        match self {
            Conn::Etcd(kv) => kv.get(key, None).await.is_ok(),
            Conn::Redis(c) => redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(c)
                .await
                .is_ok(),
        }
    }
}

async fn run_client(
    mut conn: Conn,
    args: Arc<Args>,
    me: u64,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut rng = SmallRng::seed_from_u64(args.seed + me);
    let mut tally = Tally {
        ok: 0,
        failed: 0,
        latency_us: Histogram::new(3).expect("a 3-digit histogram"),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    while !stop.load(Ordering::Relaxed) {
        let key = format!("key{}", rng.gen_range(0..args.keys));
        let start = Instant::now();
        let outcome = match args.workload {
            Workload::W => {
                let value: Vec<u8> = (0..args.value_size)
                    .map(|_| rng.gen_range(b'a'..=b'z'))
                    .collect();
                tokio::time::timeout(timeout, conn.put(key, value)).await
            }
            Workload::C => tokio::time::timeout(timeout, conn.get(key)).await,
        };
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        if outcome == Ok(true) {
            tally.ok += 1;
            let us = start.elapsed().as_micros() as u64;
            let _ = tally.latency_us.record(us.max(1));
        } else {
            tally.failed += 1;
        }
    }
    tally
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let conns = connect(&args).await?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(run_client(
                conns[i % conns.len()].clone_conn(),
                args.clone(),
                i as u64,
                measuring.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally {
        ok: 0,
        failed: 0,
        latency_us: Histogram::new(3)?,
    };
    for task in tasks {
        let tally = task.await?;
        total.ok += tally.ok;
        total.failed += tally.failed;
        total.latency_us.add(&tally.latency_us)?;
    }
    let h = &total.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let report = Report {
        store: args.store,
        config: (*args).clone(),
        elapsed_s: elapsed,
        ok: total.ok,
        failed: total.failed,
        throughput_ops_per_s: (total.ok as f64 / elapsed * 10.0).round() / 10.0,
        latency_ms: Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        },
    };
    if !args.json {
        eprintln!(
            "{:?} {:?} {} clients: {:.1} ops/s, p50 {:.3} ms, p99 {:.3} ms, {} failed",
            args.store,
            args.workload,
            args.clients,
            report.throughput_ops_per_s,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.failed
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

impl Conn {
    fn clone_conn(&self) -> Conn {
        match self {
            Conn::Etcd(kv) => Conn::Etcd(kv.clone()),
            Conn::Redis(c) => Conn::Redis(c.clone()),
        }
    }
}

/// The connections the clients use: etcd's are shared (client `i` uses
/// connection `i % n`), Redis gets one per client (like redis-benchmark).
async fn connect(args: &Args) -> Result<Vec<Conn>, Box<dyn std::error::Error>> {
    let mut conns = Vec::new();
    match args.store {
        Store::Etcd => {
            let endpoints: Vec<String> = args
                .endpoints
                .split(',')
                .map(|e| {
                    if e.contains("://") {
                        e.to_string()
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect();
            for _ in 0..args.conns.unwrap_or(args.clients.min(16)).max(1) {
                let client = etcd_client::Client::connect(&endpoints, None)
                    .await
                    .map_err(|e| format!("cannot connect to etcd at {}: {e}", args.endpoints))?;
                conns.push(Conn::Etcd(client.kv_client()));
            }
        }
        Store::Redis => {
            let addr = args.endpoints.trim_start_matches("redis://");
            let client = redis::Client::open(format!("redis://{addr}"))?;
            for _ in 0..args.clients.max(1) {
                let conn = client
                    .get_multiplexed_tokio_connection()
                    .await
                    .map_err(|e| format!("cannot connect to Redis at {addr}: {e}"))?;
                conns.push(Conn::Redis(conn));
            }
        }
    }
    Ok(conns)
}
