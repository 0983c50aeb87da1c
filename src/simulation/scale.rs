//! A cluster far larger than this machine runs as processes (issue 11,
//! item 9): one manager and `servers` in-memory servers on madsim, `tables`
//! tables of one partition per server each (so `servers x tables`
//! partitions, three replicas each), no client load. Servers join at 10 s
//! and (optionally) server 0 is lost for good at 20 s; a watcher polls the
//! manager's status every second and reports when the placement converged:
//! every partition has 3 voters on live servers, no learner and a leader,
//! and every live server's replica and leader counts are within one of the
//! mean. Run by `sim --scale` (the runner prints the report).

use crate::client::{Client, ClientConfig};
use crate::manager::status::{ClusterStatus, ServerState};
use crate::manager::{run_manager, ManagerConfig, SplitThresholds};
use crate::rt::sim_rt::SimRuntime;
use crate::rt::SimDisk;
use crate::server::{run_server, RaftTuning, ServerConfig};
use madsim::time::{sleep, Instant};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
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
    /// Membership changes the cluster made (from the stats).
    pub changes: u64,
}

fn manager_addr() -> SocketAddr {
    "10.0.0.100:24000".parse().unwrap()
}

fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8 + 1]),
        23000,
    )
}

/// When every fault has happened: convergence counts from here.
const LAST_FAULT: Duration = Duration::from_secs(20);

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
    let report = watcher
        .spawn(async move {
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
                if let Ok(status) = client.cluster_status().await {
                    let report = summarize(&status, lose.map(|_| 0));
                    let settled = report.short == 0
                        && report.learning == 0
                        && report.leaderless == 0
                        && within_one(&status, lose.map(|_| 0));
                    if settled && elapsed >= LAST_FAULT + Duration::from_secs(1) {
                        return ScaleReport {
                            converged_at: Some(elapsed),
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
    ScaleReport {
        changes: crate::stats::snapshot().get(crate::stats::Event::MembershipChange)
            - changes_before,
        ..report
    }
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
        changes: 0,
    }
}
