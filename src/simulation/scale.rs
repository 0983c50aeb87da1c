//! A cluster far larger than this machine runs as processes (issue 11,
//! item 9): one manager and `servers` in-memory servers on madsim, `tables`
//! tables of one partition per server each (so `servers x tables`
//! partitions, three replicas each). Servers join at 10 s; from 12 s an
//! operator writes a few keys into `splits` partitions and splits each
//! through its leader (`admin split`); (optionally) server 0 is lost for
//! good at 20 s. A watcher polls the manager's status every second and
//! reports when the placement converged: every partition has 3 voters on
//! live servers, no learner and a leader, every table's ranges tile its
//! keys with neither gap nor overlap, and every live server's replica and
//! leader counts are within one of the mean. Then every key the operator
//! wrote is read back. Run by `sim --scale` (the runner prints the report).

use crate::client::{Client, ClientConfig};
use crate::key::Key;
use crate::manager::status::{ClusterStatus, ServerState};
use crate::manager::{run_manager, ManagerConfig, SplitThresholds};
use crate::op::{Op, OpResult};
use crate::rt::sim_rt::SimRuntime;
use crate::rt::SimDisk;
use crate::server::{run_server, RaftTuning, ServerConfig};
use madsim::time::{sleep, Instant};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The scale scenario's shape.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// Servers at the start (the manager's `--servers`).
    pub servers: usize,
    /// Tables; each has one partition per initial server.
    pub tables: usize,
    /// Servers that join at 10 s (`--join`).
    pub joins: usize,
    /// Partitions split by the operator between 12 s and 20 s.
    pub splits: usize,
    /// Server 0 is lost for good at 20 s (the manager's `--dead-after` is 5 s).
    pub lose: bool,
    /// How long to wait for convergence (simulated).
    pub bound: Duration,
}

/// What the scale scenario saw.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    pub partitions: usize,
    pub servers_live: usize,
    /// When the placement converged, after the last fault (simulated time
    /// since the start); `None`: not within the bound.
    pub converged_at: Option<Duration>,
    /// The last status seen, summarized: (min, max) replicas and leaders
    /// per live server, partitions short of 3 live voters, with learners,
    /// without a leader.
    pub replicas: (usize, usize),
    pub leaders: (usize, usize),
    pub short: usize,
    pub learning: usize,
    pub leaderless: usize,
    /// Tables whose partitions do not tile `[0, end)` exactly (a gap or
    /// an overlap: a key readable in no range or in two).
    pub untiled: usize,
    /// Splits that applied, and when the operator was done.
    pub splits: usize,
    pub splits_done_at: Option<Duration>,
    /// Keys the operator wrote (acknowledged) and, after convergence, read
    /// back with another value or missing.
    pub keys_written: usize,
    pub keys_lost: usize,
    /// Membership changes the cluster made (from the stats).
    pub changes: u64,
}

/// Keys the operator writes into each partition it splits.
const KEYS_PER_SPLIT: u64 = 20;

fn manager_addr() -> SocketAddr {
    "10.0.0.100:24000".parse().unwrap()
}

fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8 + 1]),
        23000,
    )
}

/// When every fault has happened: convergence counts from here (or from
/// when the split operator is done, if later).
const LAST_FAULT: Duration = Duration::from_secs(20);

/// When the split operator starts (after the joins began).
const SPLITS_START: Duration = Duration::from_secs(12);

/// What the split operator did: the keys it wrote with their values, the
/// splits that applied, and when it finished.
#[derive(Default)]
struct SplitLog {
    written: Vec<(Key, Vec<u8>)>,
    splits: usize,
    done_at: Option<Duration>,
}

pub async fn scale_scenario(config: ScaleConfig) -> ScaleReport {
    let handle = madsim::runtime::Handle::current();
    let n = config.servers;
    let tables: Vec<(String, u64)> = (0..config.tables)
        .map(|t| (crate::key::numbered_table_name(t), n as u64 * 100))
        .collect();
    let manager_config = ManagerConfig {
        listen_addr: manager_addr(),
        servers: (0..n).map(server_addr).collect(),
        tables,
        replicas: 3,
        dead_after: if config.lose {
            Duration::from_secs(5)
        } else {
            ManagerConfig::DEAD_AFTER_DEFAULT
        },
        split: SplitThresholds { bytes: 0, keys: 0 },
        control: None,
    };
    handle
        .create_node()
        .name("manager")
        .ip(manager_addr().ip())
        .init(move || {
            let config = manager_config.clone();
            async move {
                if let Err(e) = run_manager(SimRuntime, SimDisk::new(), config).await {
                    panic!("manager stopped: {e}");
                }
            }
        })
        .build();
    let mut nodes = Vec::new();
    for i in 0..n + config.joins {
        let join = i >= n;
        let server = ServerConfig {
            node_id: i as u64,
            listen_addr: server_addr(i),
            advertise_addr: server_addr(i),
            managers: vec![manager_addr()],
            fixed_map: None,
            join,
            heartbeat_interval: ServerConfig::HEARTBEAT_INTERVAL_DEFAULT,
            storage: None,
            raft_tick: ServerConfig::RAFT_TICK_DEFAULT,
            raft: RaftTuning::default(),
        };
        let node = handle
            .create_node()
            .name(format!("server{i}"))
            .ip(server_addr(i).ip())
            .init(move || {
                let config = server.clone();
                async move {
                    if join {
                        sleep(Duration::from_secs(10)).await;
                    }
                    if let Err(e) = run_server(SimRuntime, SimDisk::new(), config).await {
                        panic!("server stopped: {e}");
                    }
                }
            })
            .build();
        nodes.push(node.id());
    }
    let start = Instant::now();
    let watcher = handle
        .create_node()
        .name("watcher")
        .ip(IpAddr::from([10, 0, 9, 9]))
        .build();
    let lose = config.lose.then_some(nodes[0]);
    let bound = config.bound;
    let changes_before = crate::stats::snapshot().get(crate::stats::Event::MembershipChange);
    let log = Arc::new(Mutex::new(SplitLog::default()));
    let operator_log = log.clone();
    let table_names: Vec<String> = (0..config.tables)
        .map(crate::key::numbered_table_name)
        .collect();
    let splits = config.splits;
    handle
        .create_node()
        .name("operator")
        .ip(IpAddr::from([10, 0, 9, 8]))
        .build()
        .spawn(async move {
            sleep(SPLITS_START).await;
            split_operator(n, &table_names, splits, &operator_log).await;
            operator_log.lock().unwrap().done_at = Some(start.elapsed());
        });
    let watcher_log = log.clone();
    let report = watcher
        .spawn(async move {
            let log = watcher_log;
            let client = Client::connect(SimRuntime, ClientConfig::new(manager_addr()))
                .await
                .expect("the manager answers");
            let mut lost = false;
            let mut last = None;
            loop {
                sleep(Duration::from_secs(1)).await;
                let elapsed = start.elapsed();
                if let (Some(node), false) = (lose, lost) {
                    if elapsed >= LAST_FAULT {
                        madsim::runtime::Handle::current().kill(node);
                        lost = true;
                    }
                }
                let operator_done = log.lock().unwrap().done_at.is_some();
                if let Ok(status) = client.cluster_status().await {
                    let report = summarize(&status, lose.map(|_| 0));
                    let settled = report.short == 0
                        && report.learning == 0
                        && report.leaderless == 0
                        && report.untiled == 0
                        && within_one(&status, lose.map(|_| 0));
                    if settled && operator_done && elapsed >= LAST_FAULT + Duration::from_secs(1) {
                        let written = log.lock().unwrap().written.clone();
                        let keys_lost = read_back(&client, &written).await;
                        return ScaleReport {
                            converged_at: Some(elapsed),
                            keys_lost,
                            ..report
                        };
                    }
                    last = Some(report);
                }
                if elapsed >= bound {
                    return last.expect("a status within the bound");
                }
            }
        })
        .await
        .expect("the watcher runs");
    let log = log.lock().unwrap();
    ScaleReport {
        changes: crate::stats::snapshot().get(crate::stats::Event::MembershipChange)
            - changes_before,
        splits: log.splits,
        splits_done_at: log.done_at,
        keys_written: log.written.len(),
        ..report
    }
}

/// The split operator: for split `i`, partition `i / tables` of table
/// `i % tables` (the one holding key numbers `[100 p, 100 p + 100)`) gets
/// [`KEYS_PER_SPLIT`] keys, then is split in the middle of them through its
/// leader. A write or a split that fails (a leader moving away, a replica
/// being replaced) is retried for a while.
async fn split_operator(servers: usize, tables: &[String], splits: usize, log: &Mutex<SplitLog>) {
    let Ok(client) = Client::connect(SimRuntime, ClientConfig::new(manager_addr())).await else {
        return;
    };
    let mut session = client.session();
    for i in 0..splits {
        let table = &tables[i % tables.len()];
        let start = (i / tables.len() % servers) as u64 * 100;
        // Written before the split, and again (new values) after it,
        // through a map that may not show the split yet.
        let at = start + KEYS_PER_SPLIT / 2;
        write_keys(&mut session, table, start, &format!("split{i}"), log).await;
        for _ in 0..10 {
            if split_at(&client, table, at).await {
                log.lock().unwrap().splits += 1;
                break;
            }
            sleep(Duration::from_millis(500)).await;
        }
        write_keys(&mut session, table, start, &format!("after{i}"), log).await;
    }
}

/// Writes keys `start..start + KEYS_PER_SPLIT` of `table` in one command
/// (values `<tag>-<num>`), retried for a while; once acknowledged, they
/// replace those keys' expected values in the log.
async fn write_keys(
    session: &mut crate::client::Session<SimRuntime>,
    table: &str,
    start: u64,
    tag: &str,
    log: &Mutex<SplitLog>,
) {
    let writes: Vec<(Key, Vec<u8>)> = (start..start + KEYS_PER_SPLIT)
        .map(|num| (Key::new(table, num), format!("{tag}-{num}").into_bytes()))
        .collect();
    let ops: Vec<Op> = writes
        .iter()
        .map(|(key, value)| Op::Put {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    for _ in 0..10 {
        if session.execute(ops.clone()).await.is_ok() {
            let mut log = log.lock().unwrap();
            log.written
                .retain(|(k, _)| !writes.iter().any(|(w, _)| w == k));
            log.written.extend(writes);
            return;
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// Splits the partition of `table` holding key number `at` (not as its
/// first key) at `at`, through its leader; whether the split applied.
async fn split_at(client: &Client<SimRuntime>, table: &str, at: u64) -> bool {
    let Ok(status) = client.cluster_status().await else {
        return false;
    };
    let Some(p) = status
        .partitions
        .iter()
        .find(|p| p.table == table && p.start < at && p.end.is_none_or(|e| at < e))
    else {
        return false;
    };
    let Some(addr) = p
        .leader
        .and_then(|l| status.servers.iter().find(|s| s.id == l))
        .map(|s| s.addr)
    else {
        return false;
    };
    client.split_partition(addr, p.id, Some(at)).await.is_ok()
}

/// Reads every written key back (retrying unavailable reads); how many are
/// missing or hold another value.
async fn read_back(client: &Client<SimRuntime>, written: &[(Key, Vec<u8>)]) -> usize {
    let mut session = client.session();
    let mut lost = 0;
    for (key, value) in written {
        let mut answer = None;
        for _ in 0..20 {
            match session.execute(vec![Op::Get { key: key.clone() }]).await {
                Ok(results) => {
                    answer = Some(results);
                    break;
                }
                Err(_) => sleep(Duration::from_millis(500)).await,
            }
        }
        match answer.as_deref() {
            Some([OpResult::Get(Some(v))]) if v == value => {}
            _ => lost += 1,
        }
    }
    lost
}

/// Per live server: (replicas, leaders).
fn loads(status: &ClusterStatus, lost: Option<u64>) -> BTreeMap<u64, (usize, usize)> {
    status
        .servers
        .iter()
        .filter(|s| Some(s.id) != lost && s.state == ServerState::Up)
        .map(|s| (s.id, (s.replicas, s.leaders)))
        .collect()
}

/// Whether every live server's replica and leader counts are within one of
/// the mean.
fn within_one(status: &ClusterStatus, lost: Option<u64>) -> bool {
    let loads = loads(status, lost);
    let n = loads.len().max(1) as f64;
    let mean = |f: fn(&(usize, usize)) -> usize| loads.values().map(f).sum::<usize>() as f64 / n;
    let (r, l) = (mean(|x| x.0), mean(|x| x.1));
    loads
        .values()
        .all(|&(rc, lc)| (rc as f64 - r).abs() <= 1.0 && (lc as f64 - l).abs() <= 1.0)
}

fn summarize(status: &ClusterStatus, lost: Option<u64>) -> ScaleReport {
    let loads = loads(status, lost);
    let live: Vec<u64> = loads.keys().copied().collect();
    let range = |f: fn(&(usize, usize)) -> usize| {
        (
            loads.values().map(f).min().unwrap_or(0),
            loads.values().map(f).max().unwrap_or(0),
        )
    };
    ScaleReport {
        partitions: status.partitions.len(),
        servers_live: live.len(),
        converged_at: None,
        replicas: range(|x| x.0),
        leaders: range(|x| x.1),
        short: status
            .partitions
            .iter()
            .filter(|p| p.replicas.len() < 3 || p.replicas.iter().any(|r| !live.contains(r)))
            .count(),
        learning: status
            .partitions
            .iter()
            .filter(|p| !p.learners.is_empty())
            .count(),
        leaderless: status
            .partitions
            .iter()
            .filter(|p| p.leader.is_none())
            .count(),
        untiled: untiled(status),
        splits: 0,
        splits_done_at: None,
        keys_written: 0,
        keys_lost: 0,
        changes: 0,
    }
}

/// Tables whose partitions, sorted by start, do not run from 0 to an
/// open end with each starting where the one before ended.
fn untiled(status: &ClusterStatus) -> usize {
    let mut ranges: BTreeMap<&str, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for p in &status.partitions {
        ranges.entry(&p.table).or_default().push((p.start, p.end));
    }
    ranges
        .into_values()
        .filter(|ranges| {
            let mut ranges = ranges.clone();
            ranges.sort();
            let mut next = Some(0);
            for (start, end) in ranges {
                if next != Some(start) {
                    return true;
                }
                next = end;
            }
            next.is_some()
        })
        .count()
}
