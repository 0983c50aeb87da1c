//! The cluster scenario: one manager, three servers and four clients on their
//! own simulated nodes, running the production drivers (`run_manager`,
//! `run_server`, `Client`/`Session`) on [`SimRuntime`].
//!
//! ```text
//!   manager 10.0.0.100:24000      tables t (key space 60), u (key space 30)
//!   servers 10.0.0.1..3:23000     3 partitions per table, one copy each
//!   clients 10.0.1.1..4           one Session each, random commands
//! ```
//!
//! Timeline (all choices drawn from the simulation's seeded rng):
//! 1. `0 s ..` [`CHAOS`]: every client runs random commands (PUT, GET, SWAP,
//!    DELETE, SCAN, and multi-operation commands inside one partition) over
//!    its own keys, with a small value space. Meanwhile the network drops
//!    1–3 % of datagrams with 1–20 ms latency; one to three times a server is
//!    killed and later restarted; one to three client→server / server→client
//!    links are clogged for a while; and in half the seeds the manager is
//!    killed and restarted. Every outcome goes through the [`Model`] checker.
//!
//!    Two storage modes ([`Mode`]): in [`Mode::Memory`] servers keep data in
//!    memory only, so a killed server's partitions come back empty and the
//!    model wipes them; in [`Mode::Durable`] servers run with `--persistence`
//!    on a harness-owned [`SimDisk`] that loses (or tears) unsynced bytes when
//!    the server is killed, and every acknowledged write must survive.
//! 2. At [`CHAOS`] everything is healed: links unclogged, dead servers
//!    restarted, loss set to zero.
//! 3. Liveness: each client must then complete a PUT+GET in every partition
//!    and a SCAN of each table, all successfully, within [`LIVENESS_BOUND`]
//!    of simulated time.
//!
//! [`Config::faults`] narrows the fault menu ([`FaultKind`]). The whole
//! schedule is still drawn from the rng and the disabled kinds are then left
//! out, so narrowing keeps the remaining faults where they were (the run as a
//! whole still differs: fewer faults change every later random draw).

use super::model::{fmt_ops, Counts, Model};
use crate::client::{Client, ClientConfig, ClientError, Session};
use crate::key::Key;
use crate::manager::{run_manager, ManagerConfig};
use crate::map::{PartitionId, PartitionMap};
use crate::op::Op;
use crate::rt::sim_rt::SimRuntime;
use crate::rt::SimDisk;
use crate::server::{run_server, ServerConfig};
use crate::storage::group_commit::GroupCommitConfig;
use crate::storage::StorageConfig;
use madsim::net::NetSim;
use madsim::rand::{seq::SliceRandom, Rng};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use madsim::time::{sleep, sleep_until, Instant};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Length of the faulty phase.
pub const CHAOS: Duration = Duration::from_secs(30);
/// After healing, every client must finish its liveness commands within this.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(15);
const CLIENTS: usize = 4;
const SERVERS: usize = 3;
/// Tables and their initial key spaces.
const TABLES: [(&str, u64); 2] = [("t", 60), ("u", 30)];
/// Key numbers used per table: a little beyond the key space, so the
/// open-ended last partition gets keys past `N` too.
const UNIVERSE: [(&str, u64); 2] = [("t", 66), ("u", 33)];
/// Small value space, so values collide.
const VALUES: [&str; 4] = ["v0", "v1", "v2", "v3"];

fn manager_addr() -> SocketAddr {
    "10.0.0.100:24000".parse().unwrap()
}

fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 0, 0, i as u8 + 1]), 23000)
}

fn client_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 0, 1, i as u8 + 1])
}

fn manager_config() -> ManagerConfig {
    ManagerConfig {
        listen_addr: manager_addr(),
        servers: (0..SERVERS).map(server_addr).collect(),
        tables: TABLES.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        replicas: 1,
    }
}

/// How servers keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In memory only: a restarted server's partitions come back empty.
    Memory,
    /// Write-ahead log and snapshots on a [`SimDisk`]; a kill is a power cut
    /// that loses unsynced bytes, and acknowledged writes must survive it.
    Durable,
}

impl Mode {
    fn test_name(self) -> &'static str {
        match self {
            Mode::Memory => "chaos",
            Mode::Durable => "chaos_durable",
        }
    }

    /// Lower-case name, as the `sim` runner's `--mode` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Durable => "durable",
        }
    }
}

/// A kind of fault the scenario can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Server kills and restarts (power cuts in [`Mode::Durable`]).
    Kill,
    /// Clogged client→server / server→client links.
    Clog,
    /// A manager kill and restart (in half the seeds).
    Manager,
    /// 1–3 % datagram loss. Without it nothing is lost.
    Loss,
    /// Random latency from 1 ms up to a per-seed maximum of 2–20 ms, which
    /// reorders datagrams. Without it every datagram takes 1 ms (madsim has
    /// no zero latency).
    Latency,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Clog,
        FaultKind::Manager,
        FaultKind::Loss,
        FaultKind::Latency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Clog => "clog",
            FaultKind::Manager => "manager",
            FaultKind::Loss => "loss",
            FaultKind::Latency => "latency",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`FaultKind`]s; the default is all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults(u8);

impl Faults {
    pub fn all() -> Faults {
        Faults(FaultKind::ALL.iter().fold(0, |bits, k| bits | k.bit()))
    }

    pub fn none() -> Faults {
        Faults(0)
    }

    pub fn with(self, kind: FaultKind) -> Faults {
        Faults(self.0 | kind.bit())
    }

    pub fn contains(self, kind: FaultKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Parses a comma-separated list of [`FaultKind`] names, or `all` /
    /// `none`.
    pub fn parse(list: &str) -> Result<Faults, String> {
        match list.trim() {
            "all" => return Ok(Faults::all()),
            "none" | "" => return Ok(Faults::none()),
            _ => {}
        }
        list.split(',')
            .map(str::trim)
            .try_fold(Faults::none(), |set, name| {
                FaultKind::parse(name).map(|k| set.with(k)).ok_or_else(|| {
                    let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                    format!(
                    "unknown fault `{name}` (expected a comma-separated list of {}, or all / none)",
                    names.join(", ")
                )
                })
            })
    }
}

impl Default for Faults {
    fn default() -> Faults {
        Faults::all()
    }
}

impl fmt::Display for Faults {
    /// The comma-separated list [`Faults::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Faults::none() {
            return f.write_str("none");
        }
        let names: Vec<&str> = FaultKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(FaultKind::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// How to run [`scenario_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    /// Which faults to inject (default: all).
    pub faults: Faults,
    /// Print the reproduce line before and the [`Summary`] after the run
    /// (the test front end does; the runner prints its own lines).
    pub print: bool,
}

impl Config {
    /// All faults, printing on.
    pub fn new(mode: Mode) -> Config {
        Config {
            mode,
            faults: Faults::all(),
            print: true,
        }
    }
}

/// What one run did; equal for two runs of the same seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub mode: Mode,
    pub seed: u64,
    pub faults: Faults,
    pub counts: Counts,
    pub kills: u64,
    pub clogs: u64,
    pub loss: String,
    pub max_latency_ms: u64,
    pub command_timeout: Duration,
    pub attempt_timeout: Duration,
    pub end: Duration,
    pub trace_hash: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "{:?} seed {}{}: {} commands ({} ok, {} unknown outcome, {} unavailable), {} kills, {} clogs, \
             loss {}, latency 1..{} ms, timeouts {:?}/{:?}, ended at {:.1?}, trace {:016x}",
            self.mode,
            self.seed,
            if self.faults == Faults::all() {
                String::new()
            } else {
                format!(" (faults: {})", self.faults)
            },
            c.commands,
            c.ok,
            c.unknown,
            c.unavailable,
            self.kills,
            self.clogs,
            self.loss,
            self.max_latency_ms,
            self.command_timeout,
            self.attempt_timeout,
            self.end,
            self.trace_hash
        )
    }
}

/// State shared by the test driver and the client nodes.
struct Shared {
    seed: u64,
    start: Instant,
    map: PartitionMap,
    model: Mutex<Model>,
    /// Set when the faulty phase ends: clients switch to liveness commands.
    healed: AtomicBool,
    /// Client deadlines, drawn per seed.
    client_config: ClientConfig,
}

impl Shared {
    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    /// Owned keys of `client` in `partition`.
    fn owned_in(&self, client: usize, partition: PartitionId) -> Vec<Key> {
        let p = &self.map.partitions[&partition];
        let model = self.model.lock().unwrap();
        model
            .universe()
            .filter(|k| k.table == p.table && p.contains(k.num) && model.owner(k) == client)
            .cloned()
            .collect()
    }

    /// Keys the server `server` holds (its partitions).
    fn keys_on(&self, server: usize) -> Vec<Key> {
        let model = self.model.lock().unwrap();
        model
            .universe()
            .filter(|k| {
                self.map
                    .partition_of(k)
                    .is_ok_and(|p| p.leader() == server as u64)
            })
            .cloned()
            .collect()
    }
}

enum Fault {
    KillManager,
    RestartManager,
    Kill(usize),
    Restart(usize),
    Clog(NodeId, NodeId),
    Unclog(NodeId, NodeId),
}

impl Fault {
    fn kind(&self) -> FaultKind {
        match self {
            Fault::KillManager | Fault::RestartManager => FaultKind::Manager,
            Fault::Kill(_) | Fault::Restart(_) => FaultKind::Kill,
            Fault::Clog(..) | Fault::Unclog(..) => FaultKind::Clog,
        }
    }
}

/// [`scenario`] with in-memory servers.
pub async fn scenario_memory() -> Summary {
    scenario(Mode::Memory).await
}

/// [`scenario`] with durable servers.
pub async fn scenario_durable() -> Summary {
    scenario(Mode::Durable).await
}

/// A storage configuration small enough that a run rotates log segments and
/// takes checkpoints (snapshots plus log purge) several times.
fn storage_config(rng: &mut impl Rng, server: usize) -> StorageConfig {
    StorageConfig {
        log_dir: format!("log{server}").into(),
        db_dir: format!("db{server}").into(),
        group_commit: GroupCommitConfig {
            batch_size: rng.gen_range(1..=64),
            batch_timeout: Duration::from_micros(rng.gen_range(0..=8000)),
        },
        segment_bytes_max: rng.gen_range(4..=64) * 1024,
        checkpoint_log_bytes: rng.gen_range(8..=128) * 1024,
    }
}

/// Runs the whole scenario, with every fault, on the current simulation and
/// returns its summary. Panics (with the seed) on any checker violation.
pub async fn scenario(mode: Mode) -> Summary {
    scenario_with(Config::new(mode)).await
}

/// [`scenario`] with the faults of `config` only.
pub async fn scenario_with(config: Config) -> Summary {
    let Config {
        mode,
        faults: enabled,
        print,
    } = config;
    let handle = Handle::current();
    let seed = handle.seed();
    if print {
        println!(
            "{mode:?} seed {seed}: reproduce with `MADSIM_TEST_SEED={seed} cargo test --release --features sim --test sim {} -- --exact`",
            mode.test_name()
        );
    }
    let mut rng = madsim::rand::thread_rng();
    let net = NetSim::current();
    // Drawn even when disabled, so the rest of the schedule stays put.
    let mut loss: f64 = rng.gen_range(0.01..0.03);
    let mut max_latency_ms: u64 = rng.gen_range(2..=20);
    if !enabled.contains(FaultKind::Loss) {
        loss = 0.0;
    }
    let latency = if enabled.contains(FaultKind::Latency) {
        Duration::from_millis(1)..Duration::from_millis(max_latency_ms)
    } else {
        // An empty range would panic in madsim: 1 ms plus at most 1 ns.
        max_latency_ms = 1;
        Duration::from_millis(1)..Duration::from_millis(1) + Duration::from_nanos(1)
    };
    net.update_config(|c| {
        c.packet_loss_rate = loss;
        c.send_latency = latency;
    });

    // Short deadlines make more unknown outcomes and more retries.
    let mut client_config = ClientConfig::new(manager_addr());
    client_config.command_timeout = Duration::from_millis(rng.gen_range(1500..=5000));
    client_config.attempt_timeout = Duration::from_millis(rng.gen_range(200..=1000));

    let map = manager_config().build_map().expect("valid cluster config");
    let universe: Vec<Key> = UNIVERSE
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |num| Key::new(*t, num)))
        .collect();
    let values: Vec<Vec<u8>> = VALUES.iter().map(|v| v.as_bytes().to_vec()).collect();
    let shared = Arc::new(Shared {
        seed,
        start: Instant::now(),
        map,
        model: Mutex::new(Model::new(seed, CLIENTS, universe, &values)),
        healed: AtomicBool::new(false),
        client_config,
    });

    let manager = handle
        .create_node()
        .name("manager")
        .ip(manager_addr().ip())
        .init(|| async {
            if let Err(e) = run_manager(SimRuntime, manager_config()).await {
                panic!("manager stopped: {e}");
            }
        })
        .build()
        .id();
    let disks: Vec<SimDisk> = (0..SERVERS).map(|_| SimDisk::new()).collect();
    let servers: Vec<NodeId> = (0..SERVERS)
        .map(|i| {
            let storage = (mode == Mode::Durable).then(|| {
                // Syncs take time, so kills land in the middle of some.
                disks[i].set_sync_delay(Duration::from_micros(rng.gen_range(0..=8000)));
                storage_config(&mut rng, i)
            });
            let config = ServerConfig {
                node_id: i as u64,
                listen_addr: server_addr(i),
                advertise_addr: server_addr(i),
                manager_addr: manager_addr(),
                heartbeat_interval: ServerConfig::HEARTBEAT_INTERVAL_DEFAULT,
                storage,
                raft_tick: ServerConfig::RAFT_TICK_DEFAULT,
                raft: Default::default(),
            };
            let disk = disks[i].clone();
            handle
                .create_node()
                .name(format!("server{i}"))
                .ip(server_addr(i).ip())
                // `init` runs again on every restart, with empty memory (and,
                // when durable, whatever the disk kept).
                .init(move || {
                    let (config, disk) = (config.clone(), disk.clone());
                    async move {
                        if let Err(e) = run_server(SimRuntime, disk, config).await {
                            panic!("seed {seed}: server {i} stopped: {e}");
                        }
                    }
                })
                .build()
                .id()
        })
        .collect();
    let mut clients = Vec::new();
    let mut client_ids = Vec::new();
    for i in 0..CLIENTS {
        let node = handle
            .create_node()
            .name(format!("client{i}"))
            .ip(client_ip(i))
            .build();
        client_ids.push(node.id());
        clients.push(node.spawn(client_main(i, shared.clone())));
    }

    // The fault schedule, drawn up front.
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    let secs = |s: f64| Duration::from_secs_f64(s);
    let mut t = rng.gen_range(2.0..10.0);
    for _ in 0..rng.gen_range(1..=3) {
        let server = rng.gen_range(0..SERVERS);
        let down = rng.gen_range(0.3..8.0);
        faults.push((secs(t), Fault::Kill(server)));
        faults.push((secs(t + down), Fault::Restart(server)));
        t += down + rng.gen_range(1.0..10.0);
        if t >= CHAOS.as_secs_f64() - 1.0 {
            break;
        }
    }
    for _ in 0..rng.gen_range(1..=3) {
        let (c, s) = (
            client_ids[rng.gen_range(0..CLIENTS)],
            servers[rng.gen_range(0..SERVERS)],
        );
        let links = [vec![(c, s)], vec![(s, c)], vec![(c, s), (s, c)]]
            .choose(&mut rng)
            .unwrap()
            .clone();
        let at = rng.gen_range(1.0..CHAOS.as_secs_f64() - 1.0);
        let len = rng.gen_range(0.2..8.0);
        for (a, b) in links {
            faults.push((secs(at), Fault::Clog(a, b)));
            faults.push((secs(at + len), Fault::Unclog(a, b)));
        }
    }
    if rng.gen_bool(0.5) {
        // The manager is off the data path: commands must go on meanwhile.
        let at = rng.gen_range(5.0..CHAOS.as_secs_f64() - 5.0);
        faults.push((secs(at), Fault::KillManager));
        faults.push((secs(at + rng.gen_range(0.5..4.0)), Fault::RestartManager));
    }
    faults.retain(|(_, fault)| enabled.contains(fault.kind()));
    faults.sort_by_key(|(at, _)| *at);

    let (mut kills, mut clogs) = (0, 0);
    let mut down: BTreeMap<usize, ()> = BTreeMap::new();
    let mut clogged: BTreeMap<(NodeId, NodeId), usize> = BTreeMap::new();
    for (at, fault) in faults {
        if at >= CHAOS {
            break;
        }
        sleep_until(shared.start + at).await;
        match fault {
            Fault::KillManager => {
                handle.kill(manager);
                kills += 1;
            }
            Fault::RestartManager => handle.restart(manager),
            Fault::Kill(s) => {
                handle.kill(servers[s]);
                match mode {
                    Mode::Memory => {
                        let lost = shared.keys_on(s);
                        shared.model.lock().unwrap().wipe(lost);
                    }
                    // A power cut: unsynced bytes are lost, or kept in part
                    // (possibly torn). Acknowledged writes must all survive,
                    // and a command in flight may or may not have happened,
                    // which the model's usual rules already allow.
                    Mode::Durable => {
                        disks[s].crash(|n| rng.gen_range(0..n));
                    }
                }
                down.insert(s, ());
                kills += 1;
            }
            Fault::Restart(s) => {
                // Always after a kill: restart alone cannot re-bind the address.
                if down.remove(&s).is_some() {
                    handle.restart(servers[s]);
                }
            }
            Fault::Clog(a, b) => {
                net.clog_link(a, b);
                *clogged.entry((a, b)).or_default() += 1;
                clogs += 1;
            }
            Fault::Unclog(a, b) => {
                let n = clogged.entry((a, b)).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    net.unclog_link(a, b);
                    clogged.remove(&(a, b));
                }
            }
        }
    }
    sleep_until(shared.start + CHAOS).await;

    // Heal everything, then demand progress.
    for (a, b) in clogged.keys() {
        net.unclog_link(*a, *b);
    }
    for s in down.keys() {
        handle.restart(servers[*s]);
    }
    net.update_config(|c| c.packet_loss_rate = 0.0);
    shared.healed.store(true, Ordering::SeqCst);
    let healed_at = shared.elapsed();
    for (i, client) in clients.into_iter().enumerate() {
        let left = (healed_at + LIVENESS_BOUND).saturating_sub(shared.elapsed());
        match madsim::time::timeout(left, client).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("seed {seed}: client {i} task failed: {e:?}"),
            Err(_) => panic!(
                "seed {seed}: liveness: client {i} did not finish its commands within \
                 {LIVENESS_BOUND:?} after everything was healed at {healed_at:?}"
            ),
        }
    }

    let model = shared.model.lock().unwrap();
    let summary = Summary {
        mode,
        seed,
        faults: enabled,
        counts: model.counts.clone(),
        kills,
        clogs,
        loss: format!("{:.1}%", loss * 100.0),
        max_latency_ms,
        command_timeout: shared.client_config.command_timeout,
        attempt_timeout: shared.client_config.attempt_timeout,
        end: shared.elapsed(),
        trace_hash: model.trace_hash(),
    };
    if print {
        println!("{summary}");
    }
    summary
}

/// Names the check that a failure message (the panic message of a failed
/// [`scenario`]) comes from, for one-line reports:
/// - `model`: a reply no possible state explains (lost or phantom write,
///   wrong value), a malformed reply, or an error a valid command must not get;
/// - `liveness`: no progress after everything was healed;
/// - `connect`: a client never got the partition map;
/// - `node-stopped`: a server or the manager exited with an error;
/// - `client-task`: a client node's task died;
/// - `deadlock`: madsim found every task blocked with no timer pending;
/// - `time-limit`: madsim's time limit was exceeded;
/// - `panic`: anything else (an assertion inside the library, say).
pub fn failed_check(message: &str) -> &'static str {
    let is = |s: &str| message.contains(s);
    if is(": liveness: ") {
        "liveness"
    } else if is(" cannot connect: ") {
        "connect"
    } else if is(" stopped: ") && (is(": server ") || message.starts_with("manager stopped")) {
        "node-stopped"
    } else if is(" task failed: ") {
        "client-task"
    } else if message.starts_with("seed ") && is(" command `") {
        "model"
    } else if is("all tasks will block forever") {
        "deadlock"
    } else if is("time limit exceeded") {
        "time-limit"
    } else {
        "panic"
    }
}

/// One client node: connect, random commands until healed, then liveness.
async fn client_main(me: usize, shared: Arc<Shared>) {
    let seed = shared.seed;
    // Fetching the map can fail under packet loss (seed 10941 lost every
    // attempt within a 1.5 s deadline); a real client would just retry.
    let mut attempts = 0;
    let client = loop {
        match Client::connect(SimRuntime, shared.client_config.clone()).await {
            Ok(client) => break client,
            Err(e) if attempts >= 10 => panic!("seed {seed}: client {me} cannot connect: {e}"),
            Err(_) => attempts += 1,
        }
    };
    let mut session = client.session();
    let mut rng = madsim::rand::thread_rng();
    while !shared.healed.load(Ordering::SeqCst) {
        let ops = random_command(&mut rng, me, &shared);
        // Errors are expected under faults; the checker has judged the outcome.
        let _ = run_checked(&shared, &mut session, me, ops).await;
        let think = rng.gen_range(0..20);
        sleep(Duration::from_millis(think)).await;
    }

    // Liveness: every partition and every table must work again.
    let mut commands: Vec<Vec<Op>> = Vec::new();
    for &id in shared.map.partitions.keys() {
        let key = shared.owned_in(me, id)[0].clone();
        let value = VALUES[rng.gen_range(0..VALUES.len())].as_bytes().to_vec();
        commands.push(vec![
            Op::Put {
                key: key.clone(),
                value,
            },
            Op::Get { key },
        ]);
    }
    for (table, n) in UNIVERSE {
        commands.push(vec![Op::Scan {
            start: Key::new(table, 0),
            end: Key::new(table, n + 10),
        }]);
    }
    for ops in commands {
        let shown = fmt_ops(&ops);
        if let Err(e) = run_checked(&shared, &mut session, me, ops).await {
            panic!(
                "seed {seed}: liveness: client {me} command `{shown}` failed after healing \
                 (at {:?}): {e}",
                shared.elapsed()
            );
        }
    }
}

/// Runs one command and feeds its outcome to the checker; panics on a
/// violation. Returns the client's error, if any.
async fn run_checked(
    shared: &Shared,
    session: &mut Session<SimRuntime>,
    me: usize,
    ops: Vec<Op>,
) -> Result<(), ClientError> {
    let inv = shared
        .model
        .lock()
        .unwrap()
        .invoke(me, &ops, shared.elapsed());
    let outcome = session.execute(ops).await;
    let now = shared.elapsed();
    if let Err(violation) = shared.model.lock().unwrap().complete(&inv, &outcome, now) {
        panic!("{violation}");
    }
    outcome.map(|_| ())
}

fn random_value(rng: &mut impl Rng) -> Vec<u8> {
    VALUES[rng.gen_range(0..VALUES.len())].as_bytes().to_vec()
}

fn random_single_op(rng: &mut impl Rng, key: Key) -> Op {
    match rng.gen_range(0..100) {
        0..=29 => Op::Put {
            key,
            value: random_value(rng),
        },
        30..=54 => Op::Get { key },
        55..=74 => Op::Swap {
            key,
            value: random_value(rng),
        },
        _ => Op::Delete { key },
    }
}

/// A random command over `me`'s keys: mostly single operations, some SCANs
/// (possibly across partitions, read-only), some multi-operation commands
/// inside one partition.
fn random_command(rng: &mut impl Rng, me: usize, shared: &Shared) -> Vec<Op> {
    let pick = rng.gen_range(0..100);
    if pick < 12 {
        let (table, n) = UNIVERSE[rng.gen_range(0..UNIVERSE.len())];
        let start = rng.gen_range(0..n + 3);
        let end = start + rng.gen_range(0..25);
        return vec![Op::Scan {
            start: Key::new(table, start),
            end: Key::new(table, end),
        }];
    }
    let ids: Vec<PartitionId> = shared.map.partitions.keys().copied().collect();
    let partition = ids[rng.gen_range(0..ids.len())];
    let keys = shared.owned_in(me, partition);
    if pick < 70 {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        return vec![random_single_op(rng, key)];
    }
    // A multi-operation command, all in `partition` (atomic there).
    let p = &shared.map.partitions[&partition];
    let universe_end = UNIVERSE.iter().find(|(t, _)| *t == p.table).unwrap().1;
    let last = p.last().min(universe_end + 2);
    let count = rng.gen_range(2..=5);
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        if rng.gen_bool(0.15) {
            let start = rng.gen_range(p.start..=last);
            let end = rng.gen_range(start..=last);
            ops.push(Op::Scan {
                start: Key::new(p.table.clone(), start),
                end: Key::new(p.table.clone(), end),
            });
        } else {
            let key = keys[rng.gen_range(0..keys.len())].clone();
            ops.push(random_single_op(rng, key));
        }
    }
    ops
}
