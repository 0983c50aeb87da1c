//! The cluster scenario: one manager, three to five servers and four clients
//! on their own simulated nodes, running the production drivers
//! (`run_manager`, `run_server`, `Client`/`Session`) on [`SimRuntime`].
//!
//! ```text
//!   manager 10.0.0.100:24000      one to three tables (t, u, v), key spaces 20–80
//!   servers 10.0.0.1..N:23000     N = 3..5; N partitions per table, each a Raft
//!                                 group of 3 replicas placed by the manager
//!   clients 10.0.1.1..4           one Session each, random commands
//! ```
//!
//! One seed derives everything. The cluster's [`Shape`] and the run's swarm
//! subset of fault kinds ([`Faults::swarm`]) come from a hash of the seed
//! (so the runner can name them without running the seed); every other
//! choice is drawn from the simulation's seeded rng. Timeline:
//! 1. `0 s ..` [`CHAOS`]: every client runs random commands (PUT, GET, SWAP,
//!    DELETE, SCAN, reads of other clients' keys, and multi-operation
//!    commands inside one partition) with a small value space; one client in
//!    four is *slow* (long think times, so its leader cache goes stale), and
//!    every client now and then idles for 0.5–3 s.
//!    Meanwhile the nemesis injects faults, each kind a [`FaultKind`] of the
//!    `--faults` menu. Swarm testing: each seed enables only a random subset
//!    of the kinds ([`Faults::swarm`]; kills likely, disk errors in durable
//!    mode only), and within each kind the number, timing and rates of its
//!    faults are drawn per seed as described here:
//!    - `kill`: one to four server kills (two to five in durable mode),
//!      each restarted after 0.3–6 s or,
//!      one time in three, after 1–60 ms (racing in-flight votes). In
//!      [`Mode::Durable`] a kill is a power cut (the harness-owned
//!      [`SimDisk`] loses or tears unsynced bytes; disks take 0–8 ms or, on
//!      some servers, 10–60 ms to sync), and two kills in five take down
//!      every server at once, one in five two of them (with four or five
//!      servers: two up to all but one);
//!    - `partition`: one to three server↔server partitions: a server cut
//!      off from its peers (both ways, or only its outgoing or incoming
//!      traffic), or a bridge: one peer link cut or, with four or five
//!      servers, the others split in two sides ({a,b} | c | {d,e}) that
//!      cannot talk to each other but both talk to the server in the
//!      middle; clients still reach every server, so an isolated leader
//!      keeps receiving requests;
//!    - `pause`: one or two GC-like freezes of a server (0.2–4 s); half of
//!      them with the frozen server also cut off from its peers until
//!      0.3–1.5 s after it resumes (a deposed leader waking up still
//!      believing it leads, reachable by clients), and half with a quick
//!      crash and restart of another server just before the frozen one
//!      resumes (next to a follower that lost its volatile state);
//!    - `clog`: one to three clogged client→server / server→client links;
//!    - `manager`: in half the seeds a manager kill and restart;
//!    - `loss` (1–3 % of datagrams), `dup` (1–5 % of datagrams sent twice,
//!      the copy up to 10 ms later) and `latency` (1 ms up to 2–20 ms);
//!    - `disk` (durable mode): one or two episodes of 0.2–3 s in which one
//!      server's disk fails its writes, its fsyncs, or both. The server must
//!      fail-stop: a failed write-ahead-log write or fsync makes it exit with
//!      an error (expected, not a failure), and it must not have
//!      acknowledged anything that was not durable. If it is still running
//!      [`FAIL_STOP_BOUND`] after its log failed, the run fails
//!      (`fail-stop`). When the episode ends the disk works again and the
//!      server is restarted as after a power cut (unsynced bytes lost);
//!    - `rolling`: in half the seeds a rolling restart: every server in
//!      random order killed and restarted after 0.05–1.5 s, the next one
//!      [`CATCHUP`] + 0.2–2 s after the previous one came back.
//!
//!    Two storage modes ([`Mode`]). [`Mode::Durable`]: servers run with
//!    `--persistence`, and every acknowledged write must survive everything,
//!    including a power cut of all servers at once. [`Mode::Memory`]: servers
//!    keep everything in memory, which docs/protocol.md promises survives any crash of
//!    a *minority* of each partition's replicas. The nemesis keeps to that
//!    promise: a memory-mode kill is dropped from the schedule unless every
//!    other server is up, not paused, not cut off, and has been through
//!    [`CATCHUP`] seconds of a healthy cluster (every server up and
//!    connected, the manager up) since it last restarted, resumed or
//!    reconnected, so a restarted server has caught up before another one
//!    dies. With that, the checks are the same in both modes: no
//!    acknowledged write is ever lost.
//! 2. At [`CHAOS`] everything is healed: links unclogged, paused servers
//!    resumed, dead servers restarted, loss and duplication set to zero.
//! 3. Liveness: each client must then complete a PUT+GET in every partition
//!    and a SCAN of each table, retrying while leaders are elected and
//!    restarted replicas catch up, within [`LIVENESS_BOUND`] of simulated
//!    time. The SCANs are the final durability scan.
//! 4. Linearizability: the whole history (every command with its invoke
//!    and complete times and outcome, docs/protocol.md "Histories") is checked with
//!    the project's Wing–Gong–Lowe checker ([`crate::checker`]), which sees
//!    what the per-key [`Model`] cannot: reads of other clients' keys (a
//!    stale read at a deposed leader) and whole SCAN results.
//!
//! Every command's outcome also goes through the per-key [`Model`] as it
//! completes, so most violations are reported at the command that shows them.
//!
//! [`Config::faults`] narrows the fault menu ([`FaultKind`]), and swarm
//! testing narrows it further per seed ([`Config::enabled`]). The whole
//! schedule is still drawn from the rng and the disabled kinds are then left
//! out, so narrowing keeps the remaining faults where they were (the run as a
//! whole still differs: fewer faults change every later random draw; and in
//! memory mode, dropping other faults can let more kills through the
//! minority rule). The swarm subset comes from a hash of the seed, not from
//! the rng, so it shifts no draw either.

use super::model::{fmt_ops, Counts, Model};
use crate::bench::history::{HistoryOp, HistoryRecord};
use crate::checker::{self, CheckConfig, Outcome};
use crate::client::{Client, ClientConfig, ClientError, Session};
use crate::hash::splitmix64;
use crate::key::Key;
use crate::manager::{run_manager, ManagerConfig};
use crate::map::{Partition, PartitionId, PartitionMap};
use crate::op::{Op, OpResult};
use crate::rt::sim_disk::FailedOp;
use crate::rt::sim_rt::SimRuntime;
use crate::rt::SimDisk;
use crate::server::{run_server, RaftTuning, ServerConfig};
use crate::stats::{self, Event};
use crate::storage::group_commit::GroupCommitConfig;
use crate::storage::StorageConfig;
use madsim::net::NetSim;
use madsim::rand::{seq::SliceRandom, Rng};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use madsim::time::{sleep, sleep_until, Instant};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server whose write-ahead log failed must have stopped within this
/// (of running time): it learns of the failure from its log flusher at once.
pub const FAIL_STOP_BOUND: Duration = Duration::from_millis(200);
/// Length of the faulty phase.
pub const CHAOS: Duration = Duration::from_secs(30);
/// After healing, every client must finish its liveness commands within
/// this (leader elections take 0.5–1 s, and restarted in-memory replicas
/// must catch up first).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);
/// Memory mode: seconds of a healthy cluster a server needs after it
/// restarted (or resumed, or reconnected) before another server may be
/// killed. Catching up takes an election (≤ 1 s) and a few round trips.
pub const CATCHUP: f64 = 3.0;
/// A disk is wiped only while every other server is up and has been
/// healthy this long (seconds): long enough to hold what was committed
/// before it, short enough that peers still lag by the last few entries
/// (which a wiped replica must not help elect a leader without).
pub const WIPE_CATCHUP: f64 = 1.0;
/// After the liveness phase, the cluster gets this long (two election
/// timeouts) to settle before the quiet phase starts.
pub const QUIET_SETTLE: Duration = Duration::from_secs(2);
/// Quiet phase: commands per client, each of which must succeed within
/// [`QUIET_COMMAND_BOUND`], while no leader election may happen at all.
pub const QUIET_COMMANDS: usize = 40;
/// A few network round trips and two slow fsyncs, with room to spare.
pub const QUIET_COMMAND_BOUND: Duration = Duration::from_millis(1000);
/// Budget of the final linearizability check (search states; 16 bytes each).
/// A clean run needs far fewer; a run that exhausts it is counted in the
/// summary, not failed.
const LINEARIZABILITY_MAX_STATES: u64 = 4_000_000;
const CLIENTS: usize = 4;
/// Replicas per partition; the manager places them on 3–5 servers.
const REPLICAS: usize = 3;
/// Table names, in the order a seed's tables take them.
const TABLE_NAMES: [&str; 3] = ["t", "u", "v"];
/// Small value space, so values collide.
const VALUES: [&str; 4] = ["v0", "v1", "v2", "v3"];
/// The bank workload's table (Jepsen's bank test): accounts `bank0..`,
/// [`BANK_ACCOUNTS_PER_PARTITION`] in each of its partitions (one per
/// server), each starting at [`BANK_INITIAL`] (an absent account holds it).
/// Transfers move money between two accounts; every read of all of them
/// must add up to the total. See [`bank_turn`].
const BANK_TABLE: &str = "bank";
const BANK_ACCOUNTS_PER_PARTITION: u64 = 2;
const BANK_INITIAL: i64 = 100;
/// The share of a client's chaos-phase turns that go to the bank.
const BANK_SHARE: f64 = 0.1;

fn manager_addr() -> SocketAddr {
    manager_addr_i(0)
}

/// Manager `i`'s address (several in the seeds with a replicated control
/// plane, see [`manager_count`]).
fn manager_addr_i(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 0, 0, 100 + i as u8]), 24000)
}

/// Manager `i`'s control-group address (`--peers`).
fn manager_peer(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 0, 0, 100 + i as u8]), 24001)
}

/// Half the seeds run three managers (`--peers`: a control plane that
/// survives the loss of one), the others one.
fn manager_count(seed: u64) -> usize {
    if seed_draw(seed, 50) < 0.5 {
        3
    } else {
        1
    }
}

fn admin_ip() -> IpAddr {
    IpAddr::from([10, 0, 9, 1])
}

fn splitter_ip() -> IpAddr {
    IpAddr::from([10, 0, 9, 2])
}

fn drainer_ip() -> IpAddr {
    IpAddr::from([10, 0, 9, 3])
}

fn mover_ip() -> IpAddr {
    IpAddr::from([10, 0, 9, 4])
}

/// Splits the [`FaultKind::Split`] operator asks for at most, per run.
const SPLITS_MAX: usize = 8;

fn server_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 0, 0, i as u8 + 1]), 23000)
}

fn client_ip(i: usize) -> IpAddr {
    IpAddr::from([10, 0, 1, i as u8 + 1])
}

/// The cluster of one seed: drawn from a hash of the seed alone (like the
/// swarm subset, so the runner can name it and it shifts no other draw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// 3 (two seeds in five), 4 or 5 servers; each partition has
    /// [`REPLICAS`] replicas, placed by the manager.
    pub servers: usize,
    /// One to three tables with key spaces of 20–80 keys (each table gets
    /// one partition per server).
    pub tables: Vec<(String, u64)>,
}

impl Shape {
    pub fn for_seed(seed: u64) -> Shape {
        let mut state = splitmix64(seed ^ 0x5348_4150_4500);
        let mut next = |n: u64| {
            state = splitmix64(state);
            state % n
        };
        let servers = match next(5) {
            0 | 1 => 3,
            2 | 3 => 4,
            _ => 5,
        };
        let tables = (0..1 + next(3) as usize)
            .map(|i| (TABLE_NAMES[i].to_string(), 20 + next(61)))
            .collect();
        Shape { servers, tables }
    }

    /// Key numbers used per table: a little beyond the key space, so the
    /// open-ended last partition gets keys past it too.
    fn universe(&self) -> Vec<(String, u64)> {
        self.tables
            .iter()
            .map(|(t, n)| (t.clone(), n + n / 10))
            .collect()
    }

    /// The bank's accounts (see [`BANK_TABLE`]).
    fn bank_accounts(&self) -> Vec<Key> {
        (0..BANK_ACCOUNTS_PER_PARTITION * self.servers as u64)
            .map(|n| Key::new(BANK_TABLE, n))
            .collect()
    }

    fn manager_config(
        &self,
        dead_after: Duration,
        split: crate::manager::SplitThresholds,
    ) -> ManagerConfig {
        let mut tables = self.tables.clone();
        tables.push((BANK_TABLE.to_string(), self.bank_accounts().len() as u64));
        ManagerConfig {
            listen_addr: manager_addr(),
            servers: (0..self.servers).map(server_addr).collect(),
            tables,
            replicas: REPLICAS,
            dead_after,
            split,
            control: None,
        }
    }

    /// Whether a server can be lost for good and its replicas replaced.
    fn has_spare(&self) -> bool {
        self.servers > REPLICAS
    }
}

impl fmt::Display for Shape {
    /// `5 servers, tables t:60,u:30`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables: Vec<String> = self
            .tables
            .iter()
            .map(|(t, n)| format!("{t}:{n}"))
            .collect();
        write!(f, "{} servers, tables {}", self.servers, tables.join(","))
    }
}

/// How servers keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In memory only (still replicated): a restarted server's replicas come
    /// back empty and catch up from their groups. Kills are kept to a
    /// minority at a time (see the module docs).
    Memory,
    /// Write-ahead log and snapshots on a [`SimDisk`]; a kill is a power cut
    /// that loses unsynced bytes, possibly of every server at once, and
    /// acknowledged writes must survive it.
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
    /// Server kills and restarts (power cuts in [`Mode::Durable`], also of
    /// several or all servers at once).
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
    /// Server↔server partitions: a server cut off from its peers (both
    /// ways or one way), or a bridge: a single peer link cut or, with four
    /// or five servers, two sides that only a middle server connects.
    Partition,
    /// A server frozen for a while (a GC pause), sometimes with another
    /// server crashing just before it resumes.
    Pause,
    /// Datagram duplication: 1–5 % of datagrams (per seed) are sent twice,
    /// the copy up to 10 ms later ([`crate::rt::sim_rt::set_duplication`]).
    /// madsim itself never duplicates.
    Dup,
    /// [`Mode::Durable`] only: one server's disk fails its writes, its
    /// fsyncs, or both for a while. The server must stop (fail-stop) once
    /// its write-ahead log fails, and acknowledge nothing that is not
    /// durable; when the fault ends it is restarted as after a power cut.
    Disk,
    /// A rolling restart: every server in turn is killed and restarted
    /// (0.05–1.5 s later), the next one only after the previous one has
    /// had [`CATCHUP`] seconds to catch up. In memory mode each of its
    /// kills also obeys the minority rule.
    Rolling,
    /// [`Mode::Durable`] only: a server is stopped, its disk wiped, and
    /// restarted empty with the same node id (an operator replacing a
    /// broken disk). Its replicas must not vote until a leader has caught
    /// them up, and nothing acknowledged may be lost. As with memory-mode
    /// kills, the rest of the cluster is up and caught up meanwhile.
    Wipe,
    /// Faults aimed at the transaction protocol ([`crate::client::faults`]):
    /// 2–12 % (per seed) of transaction attempts have their coordinator (the
    /// client) crash while sending the prepares, once the answers decided
    /// the attempt but before the decision went out, or after it went to
    /// some participants; and a prepare that arrived is sent again up to
    /// 3 s later. The participants' recovery must resolve every abandoned
    /// transaction, and no late prepare may revive one.
    Coordinator,
    /// An operator moving leaders: every 0.5–3 s an admin node asks the
    /// manager for the cluster's status and asks a partition's leader (as
    /// the manager last saw it) to hand its leadership to another of its
    /// replicas (`admin transfer-leader`, Raft's leadership transfer).
    Transfer,
    /// Permanent loss (with four or five servers): one server is killed
    /// and never comes back (its disk is gone too). The manager runs with a
    /// short `--dead-after` (4–7 s, per seed) and must give every partition
    /// that server held a new replica on a live one (learner, promoted once
    /// caught up, then the lost replica removed), so that at the end every
    /// partition again has [`REPLICAS`] live replicas. The short
    /// `--dead-after` also declares dead, and replaces, servers that other
    /// faults keep down for long; they drop the replicas their groups
    /// removed when they come back. Like a memory-mode kill, the loss
    /// happens only while every other server is up and caught up.
    Lose,
    /// Range splits under load: every 1–4 s an operator asks a random
    /// partition's leader to split it at a random key inside its range or
    /// at its middle key (`admin split`), up to [`SPLITS_MAX`] splits; in
    /// half of these seeds the manager also splits every partition past a
    /// small key count (8–20, per seed) by itself. Clients with maps from
    /// before a split must be refused and route again; no acknowledged
    /// write may be lost, no read may miss the keys that moved, and at the
    /// end the map must tile every table with each key counted in exactly
    /// one partition (check `control-plane`).
    Split,
    /// A server joins the running cluster: a new node (the next node id,
    /// not in the manager's `--servers`) starts with `--join` at 3–15 s
    /// (never killed). The manager adds it and moves replicas and
    /// leaderships to it; at the end it must hold replicas (check
    /// `control-plane`).
    Join,
    /// An operator drains a server (`admin drain`) at 5–20 s, again every
    /// 3 s to the end (a restarted manager forgets a drain), where the
    /// cluster can afford it with one more server lost for good: its
    /// replicas move to the other servers, new copies first, and its
    /// leaderships are handed over. At the end, if enough other servers
    /// are left for 3 replicas, it must hold no replica (check
    /// `control-plane`).
    Drain,
    /// An operator moves replicas by hand (`admin move`): every 1–4 s until
    /// healed, a random partition's random voter to a live server without
    /// one (a learner there, promoted, then the old one removed; a leader's
    /// leadership handed over first).
    Move,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::Kill,
        FaultKind::Clog,
        FaultKind::Manager,
        FaultKind::Loss,
        FaultKind::Latency,
        FaultKind::Partition,
        FaultKind::Pause,
        FaultKind::Dup,
        FaultKind::Disk,
        FaultKind::Rolling,
        FaultKind::Wipe,
        FaultKind::Coordinator,
        FaultKind::Transfer,
        FaultKind::Lose,
        FaultKind::Split,
        FaultKind::Join,
        FaultKind::Drain,
        FaultKind::Move,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Clog => "clog",
            FaultKind::Manager => "manager",
            FaultKind::Loss => "loss",
            FaultKind::Latency => "latency",
            FaultKind::Partition => "partition",
            FaultKind::Pause => "pause",
            FaultKind::Dup => "dup",
            FaultKind::Disk => "disk",
            FaultKind::Rolling => "rolling",
            FaultKind::Wipe => "wipe",
            FaultKind::Coordinator => "coordinator",
            FaultKind::Transfer => "transfer",
            FaultKind::Lose => "lose",
            FaultKind::Split => "split",
            FaultKind::Join => "join",
            FaultKind::Drain => "drain",
            FaultKind::Move => "move",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The odds that a seed enables this kind in `mode` (swarm testing, see
    /// [`Faults::swarm`]). Kills stay likely, most of all with durable
    /// servers: most bugs that lose acknowledged data need a crash to show.
    pub fn swarm_odds(self, mode: Mode) -> f64 {
        match (self, mode) {
            (FaultKind::Kill, Mode::Memory) => 0.8,
            (FaultKind::Kill, Mode::Durable) => 0.9,
            (FaultKind::Partition | FaultKind::Pause, _) => 0.7,
            (FaultKind::Disk | FaultKind::Wipe, Mode::Memory) => 0.0,
            _ => 0.5,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of [`FaultKind`]s; the default is all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults(u32);

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

    pub fn intersect(self, other: Faults) -> Faults {
        Faults(self.0 & other.0)
    }

    /// Swarm testing: the random subset of fault kinds that `seed` enables
    /// in `mode`. Each kind is on with its own odds ([`FaultKind::swarm_odds`]),
    /// drawn from a hash of the seed and the kind alone, not from the
    /// simulation's generator: the runner can name a run's subset without
    /// running it, and the subset does not shift any other random draw. A
    /// kind with higher odds in one mode is on in that mode whenever it is
    /// on in the other.
    pub fn swarm(seed: u64, mode: Mode) -> Faults {
        FaultKind::ALL
            .into_iter()
            .filter(|&k| {
                let h = splitmix64(seed ^ splitmix64(0x5357_4152_4d00 + k as u64));
                // 53 random bits as a uniform number in [0, 1).
                ((h >> 11) as f64 / (1u64 << 53) as f64) < k.swarm_odds(mode)
            })
            .fold(Faults::none(), Faults::with)
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

/// A number in `[0, 1)` drawn from a hash of the seed and `salt` alone, like
/// the swarm subset: knobs added later draw from here, so they do not shift
/// the simulation generator's stream (and every older seed's schedule).
fn seed_draw(seed: u64, salt: u64) -> f64 {
    let h = splitmix64(seed ^ splitmix64(0x4b4e_4f42_0000 + salt));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A number in `[lo, hi]`, log-uniform, from [`seed_draw`]: small values are
/// as likely as large ones, order of magnitude by order of magnitude.
fn seed_draw_log(seed: u64, salt: u64, lo: u64, hi: u64) -> u64 {
    let (lo, hi) = (lo as f64, hi as f64);
    ((lo * (hi / lo).powf(seed_draw(seed, salt))).round() as u64).clamp(lo as u64, hi as u64)
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
    /// Which faults may be injected (default: all).
    pub faults: Faults,
    /// Swarm testing (default): the run injects only the kinds of `faults`
    /// that its seed enables ([`Faults::swarm`]); off, all of `faults`.
    pub swarm: bool,
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
            swarm: true,
            print: true,
        }
    }

    /// The fault kinds a run of `seed` with this configuration injects:
    /// `faults`, narrowed to the seed's swarm subset unless `swarm` is off.
    pub fn enabled(&self, seed: u64) -> Faults {
        if self.swarm {
            self.faults.intersect(Faults::swarm(seed, self.mode))
        } else {
            self.faults
        }
    }
}

/// What the final linearizability check concluded on a passing run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linearizability {
    /// Linearizable; the search explored this many states.
    Checked { partitions: usize, states: u64 },
    /// The search ran out of budget (the per-key model still checked
    /// every command).
    GaveUp { states: u64 },
}

impl fmt::Display for Linearizability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Linearizability::Checked { partitions, states } => {
                write!(f, "linearizable ({partitions} key groups, {states} states)")
            }
            Linearizability::GaveUp { states } => {
                write!(f, "linearizability check gave up after {states} states")
            }
        }
    }
}

/// What one run did; equal for two runs of the same seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub mode: Mode,
    pub seed: u64,
    pub shape: Shape,
    pub faults: Faults,
    pub counts: Counts,
    /// Server kills (a power cut of every server counts each one) and
    /// manager kills.
    pub kills: u64,
    /// Kills the memory-mode minority rule left out of the schedule.
    pub kills_skipped: u64,
    pub clogs: u64,
    pub partitions: u64,
    pub pauses: u64,
    /// Servers restarted by a rolling restart.
    pub rolling: u64,
    /// Disk-error episodes, and how many times a server stopped on one.
    pub disk_faults: u64,
    pub fail_stops: u64,
    pub loss: String,
    /// Datagrams sent twice.
    pub dup: String,
    pub max_latency_ms: u64,
    pub command_timeout: Duration,
    pub attempt_timeout: Duration,
    pub end: Duration,
    pub linearizability: Linearizability,
    /// Transactions with unique values that [`check_atomicity`] judged.
    pub atomicity_checked: usize,
    /// Applied entries after which a Raft log is compacted (drawn per seed).
    pub compact_entries: u64,
    /// Elections, compactions, snapshot sends and installs, checkpoints,
    /// disk wipes: whether the run reached those paths.
    pub events: stats::Counts,
    pub trace_hash: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "{:?} seed {} ({}) (faults: {}): {} commands ({} ok, {} unknown outcome, {} unavailable), {} kills \
             ({} skipped), {} clogs, {} partitions, {} pauses, {} rolling restarts, \
             {} disk faults ({} fail-stops), \
             loss {}, dup {}, latency 1..{} ms, \
             timeouts {:?}/{:?}, ended at {:.1?}, {}, {} transactions checked for atomicity, \
             compaction every {} entries: {}, trace {:016x}",
            self.mode,
            self.seed,
            self.shape,
            self.faults,
            c.commands,
            c.ok,
            c.unknown,
            c.unavailable,
            self.kills,
            self.kills_skipped,
            self.clogs,
            self.partitions,
            self.pauses,
            self.rolling,
            self.disk_faults,
            self.fail_stops,
            self.loss,
            self.dup,
            self.max_latency_ms,
            self.command_timeout,
            self.attempt_timeout,
            self.end,
            self.linearizability,
            self.atomicity_checked,
            self.compact_entries,
            self.events,
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
    /// Every command and its outcome, for the linearizability check.
    history: Mutex<Vec<HistoryRecord>>,
    /// Every command with its outcome, for [`check_atomicity`].
    commands: Mutex<Vec<Recorded>>,
    /// Set when the faulty phase ends: clients switch to liveness commands.
    healed: AtomicBool,
    /// Client deadlines, drawn per seed.
    client_config: ClientConfig,
    /// Per client: think time between commands (ms range).
    think_ms: Vec<(u64, u64)>,
    /// Per client: the last error of a liveness command (for the report).
    liveness_errors: Mutex<Vec<String>>,
    /// `DISTKV_SIM_TRACE` is set: print faults and commands as they happen.
    trace: bool,
    /// Per table: the key numbers the workload uses, `0..n` ([`Shape::universe`]).
    tables: Vec<(String, u64)>,
    /// The bank's accounts ([`BANK_TABLE`]).
    bank: Vec<Key>,
    /// Servers lost for good ([`FaultKind::Lose`]).
    lost: Mutex<BTreeSet<u64>>,
    /// The manager runs with a short `--dead-after` ([`FaultKind::Lose`]).
    short_dead_after: bool,
    /// Partitions split ([`FaultKind::Split`]).
    splits: bool,
    /// The server that joined the cluster ([`FaultKind::Join`]).
    joined: Option<u64>,
    /// When the operator drains a server, and which ([`FaultKind::Drain`]).
    drain: Option<(Duration, u64)>,
    /// Whether the manager took the drain at least once.
    drained: AtomicBool,
}

impl Shared {
    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    /// The partitions of the model's tables (all but the bank's).
    fn partition_ids(&self) -> Vec<PartitionId> {
        self.map
            .partitions
            .values()
            .filter(|p| p.table != BANK_TABLE)
            .map(|p| p.id)
            .collect()
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

    /// Every key of the universe in `partition`.
    fn keys_in(&self, partition: PartitionId) -> Vec<Key> {
        let p = &self.map.partitions[&partition];
        let model = self.model.lock().unwrap();
        model
            .universe()
            .filter(|k| k.table == p.table && p.contains(k.num))
            .cloned()
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Fault {
    KillManager(usize),
    RestartManager(usize),
    Kill(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    Clog(NodeId, NodeId),
    Unclog(NodeId, NodeId),
    /// The server's disk starts failing writes and/or fsyncs.
    DiskFail {
        server: usize,
        writes: bool,
        syncs: bool,
    },
    /// The disk works again; the server (stopped, or about to be) is
    /// restarted as after a power cut.
    DiskHeal(usize),
    /// The server is stopped and its disk wiped (restarted by `Restart`).
    Wipe(usize),
    /// The server is killed for good ([`FaultKind::Lose`]).
    Lose(usize),
}

/// One fault with a beginning and an end, as drawn.
#[derive(Clone, Debug)]
struct Episode {
    kind: FaultKind,
    /// Seconds since the start.
    start: f64,
    end: f64,
    /// Servers it takes out of their groups (down, frozen, or cut off from
    /// a peer); empty for the manager and client links.
    impaired: Vec<usize>,
    begin: Vec<Fault>,
    finish: Vec<Fault>,
}

impl Episode {
    /// Whether the cluster is not fully healthy while it lasts (see
    /// [`CATCHUP`]): everything but client links.
    fn disrupts(&self) -> bool {
        !matches!(self.kind, FaultKind::Clog)
    }

    fn kill(start: f64, end: f64, servers: Vec<usize>) -> Episode {
        Episode {
            kind: FaultKind::Kill,
            start,
            end,
            begin: servers.iter().map(|&s| Fault::Kill(s)).collect(),
            finish: servers.iter().map(|&s| Fault::Restart(s)).collect(),
            impaired: servers,
        }
    }
}

/// The longest stretch of `[from, to]` that no interval covers.
fn longest_gap(intervals: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let mut clipped: Vec<(f64, f64)> = intervals
        .iter()
        .filter(|(a, b)| *b > from && *a < to)
        .map(|(a, b)| (a.max(from), b.min(to)))
        .collect();
    clipped.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (mut covered_to, mut best) = (from, 0.0f64);
    for (a, b) in clipped {
        if a > covered_to {
            best = best.max(a - covered_to);
        }
        covered_to = covered_to.max(b);
    }
    best.max(to - covered_to)
}

/// Whether killing `kill`'s servers at its start leaves every other server
/// up, not paused, not cut off, and through [`CATCHUP`] seconds of a healthy
/// cluster since it was last impaired, given the `others` episodes.
fn kill_is_safe(kill: &Episode, others: &[&Episode], servers: usize) -> bool {
    kill_is_safe_after(kill, others, servers, CATCHUP)
}

/// [`kill_is_safe`] with `catchup` seconds of health instead of [`CATCHUP`].
fn kill_is_safe_after(kill: &Episode, others: &[&Episode], servers: usize, catchup: f64) -> bool {
    let t = kill.start;
    let unhealthy: Vec<(f64, f64)> = others
        .iter()
        .filter(|e| e.disrupts())
        .map(|e| (e.start, e.end))
        .collect();
    (0..servers)
        .filter(|u| !kill.impaired.contains(u))
        .all(|u| {
            let impairing = || others.iter().filter(|e| e.impaired.contains(&u));
            if impairing().any(|e| e.start <= t && t < e.end) {
                return false;
            }
            let since = impairing()
                .filter(|e| e.end <= t)
                .map(|e| e.end)
                .fold(0.0, f64::max);
            longest_gap(&unhealthy, since, t) >= catchup
        })
}

fn is_kill(e: &Episode) -> bool {
    matches!(
        e.kind,
        FaultKind::Kill | FaultKind::Rolling | FaultKind::Lose
    )
}

/// Whether `kill` can join `kept`: safe itself, and every later kill of
/// `kept` still safe with it.
fn kill_fits(kill: &Episode, kept: &[Episode], servers: usize) -> bool {
    let mut with: Vec<&Episode> = kept.iter().collect();
    if !kill_is_safe(kill, &with, servers) {
        return false;
    }
    with.push(kill);
    kept.iter()
        .filter(|k| is_kill(k) && k.start > kill.start)
        .all(|k| kill_is_safe(k, &with, servers))
}

/// Memory mode: keeps a kill only if it leaves a caught-up majority (see the
/// module docs). Returns the kept episodes and how many kills were dropped.
/// A rolling restart goes first: each of its kills that is not safe at its
/// time is postponed (with the rest of the roll) in steps of 0.25 s until it
/// is, or dropped with the rest of the roll if that would end too late.
/// Then the other kills, in time order.
fn minority_kills_only(episodes: Vec<Episode>, servers: usize) -> (Vec<Episode>, u64) {
    let (kills, mut kept): (Vec<Episode>, Vec<Episode>) = episodes.into_iter().partition(is_kill);
    let (mut rolling, mut kills): (Vec<Episode>, Vec<Episode>) = kills
        .into_iter()
        .partition(|e| e.kind == FaultKind::Rolling);
    rolling.sort_by(|x, y| x.start.total_cmp(&y.start));
    kills.sort_by(|x, y| x.start.total_cmp(&y.start));
    let last_end = CHAOS.as_secs_f64() - 1.0;
    let mut dropped = 0;
    let mut shift = 0.0;
    let mut rolling = rolling.into_iter();
    while let Some(mut kill) = rolling.next() {
        kill.start += shift;
        kill.end += shift;
        while !kill_fits(&kill, &kept, servers) && kill.end < last_end {
            kill.start += 0.25;
            kill.end += 0.25;
            shift += 0.25;
        }
        if kill.end >= last_end {
            dropped += 1 + rolling.len() as u64;
            break;
        }
        kept.push(kill);
    }
    for kill in kills {
        if kill_fits(&kill, &kept, servers) {
            kept.push(kill);
        } else {
            dropped += 1;
        }
    }
    (kept, dropped)
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
        // Drawn to keep the generator's stream as it was; `scenario_with`
        // replaces it by a per-seed draw of 1–64 KiB.
        checkpoint_log_bytes: rng.gen_range(8..=128) * 1024,
    }
}

/// Runs the whole scenario, with every fault, on the current simulation and
/// returns its summary. Panics (with the seed) on any checker violation.
pub async fn scenario(mode: Mode) -> Summary {
    scenario_with(Config::new(mode)).await
}

/// The fault schedule: every episode, drawn up front (the draws do not
/// depend on `enabled`), then narrowed to `enabled` and, in memory mode, to
/// kills of a caught-up minority.
fn draw_schedule(
    rng: &mut impl Rng,
    seed: u64,
    mode: Mode,
    enabled: Faults,
    servers: &[NodeId],
    clients: &[NodeId],
    managers: &[NodeId],
) -> (Vec<Episode>, u64) {
    let chaos = CHAOS.as_secs_f64();
    let n = servers.len();
    let mut episodes: Vec<Episode> = Vec::new();

    // Server kills.
    let mut t = rng.gen_range(2.0..8.0);
    let kills = match mode {
        Mode::Memory => rng.gen_range(1..=4),
        Mode::Durable => rng.gen_range(2..=5),
    };
    for _ in 0..kills {
        let server = rng.gen_range(0..n);
        let shape = rng.gen_range(0..100);
        let down = if rng.gen_bool(0.3) {
            rng.gen_range(0.001..0.06)
        } else {
            rng.gen_range(0.3..6.0)
        };
        let victims: Vec<usize> = match (mode, shape) {
            (Mode::Durable, 0..=39) => (0..n).collect(),
            // Two servers, or with more than three any number short of all.
            (Mode::Durable, 40..=59) => {
                let k = if n > 3 { rng.gen_range(2..n) } else { 2 };
                (0..k).map(|j| (server + j) % n).collect()
            }
            _ => vec![server],
        };
        episodes.push(Episode::kill(t, t + down, victims));
        t += down + rng.gen_range(0.5..5.0);
        if t >= chaos - 1.0 {
            break;
        }
    }

    // Client links.
    for _ in 0..rng.gen_range(1..=3) {
        let (c, s) = (
            clients[rng.gen_range(0..CLIENTS)],
            servers[rng.gen_range(0..n)],
        );
        let links = [vec![(c, s)], vec![(s, c)], vec![(c, s), (s, c)]]
            .choose(rng)
            .unwrap()
            .clone();
        let at = rng.gen_range(1.0..chaos - 1.0);
        let len = rng.gen_range(0.2..8.0);
        episodes.push(Episode {
            kind: FaultKind::Clog,
            start: at,
            end: at + len,
            impaired: vec![],
            begin: links.iter().map(|&(a, b)| Fault::Clog(a, b)).collect(),
            finish: links.iter().map(|&(a, b)| Fault::Unclog(a, b)).collect(),
        });
    }

    // The manager is off the data path: commands must go on meanwhile.
    // With several, one of them (a seed draw, so the stream stays as with
    // one); the leader in a third of the seeds.
    let m = managers.len();
    if rng.gen_bool(0.5) {
        let at = rng.gen_range(5.0..chaos - 5.0);
        let len = rng.gen_range(0.5..4.0);
        let victim = ((seed_draw(seed, 51) * m as f64) as usize).min(m - 1);
        episodes.push(Episode {
            kind: FaultKind::Manager,
            start: at,
            end: at + len,
            impaired: vec![],
            begin: vec![Fault::KillManager(victim)],
            finish: vec![Fault::RestartManager(victim)],
        });
    }

    // Server↔server partitions. Each server leads some of the groups, so
    // cutting one off usually isolates a leader. A bridge: two sides that
    // cannot talk to each other, both talking to a server in the middle
    // (with three servers, one cut link; with more, e.g. {a,b} | c | {d,e}).
    for _ in 0..rng.gen_range(1..=3) {
        let at = rng.gen_range(1.0..chaos - 1.0);
        let len = rng.gen_range(0.3..6.0);
        let s = rng.gen_range(0..n);
        let other = (s + rng.gen_range(1..n)) % n;
        let peers: Vec<usize> = (0..n).filter(|&u| u != s).collect();
        let (links, impaired): (Vec<(usize, usize)>, Vec<usize>) = match rng.gen_range(0..100) {
            0..=49 => (
                peers.iter().flat_map(|&u| [(s, u), (u, s)]).collect(),
                vec![s],
            ),
            50..=64 => (peers.iter().map(|&u| (s, u)).collect(), vec![s]),
            65..=79 => (peers.iter().map(|&u| (u, s)).collect(), vec![s]),
            // A bridge through `s`.
            80..=89 if n > 3 => {
                let mut sides = peers.clone();
                sides.shuffle(rng);
                let (a, b) = sides.split_at(sides.len() / 2);
                let links = a
                    .iter()
                    .flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)]))
                    .collect();
                (links, sides)
            }
            _ => (vec![(s, other), (other, s)], vec![s, other]),
        };
        let links: Vec<_> = links
            .iter()
            .map(|&(a, b)| (servers[a], servers[b]))
            .collect();
        episodes.push(Episode {
            kind: FaultKind::Partition,
            start: at,
            end: at + len,
            impaired,
            begin: links.iter().map(|&(a, b)| Fault::Clog(a, b)).collect(),
            finish: links.iter().map(|&(a, b)| Fault::Unclog(a, b)).collect(),
        });
    }

    // Pauses: a frozen server keeps its (possibly leader) state and wakes up
    // behind the others; half the time it is also cut off from its peers
    // until a little after it resumes, so a deposed leader wakes up believing
    // it still leads (clients still reach it); sometimes a peer crashes and
    // restarts just before it resumes.
    for _ in 0..rng.gen_range(1..=2) {
        let at = rng.gen_range(1.0..chaos - 2.0);
        let len = rng.gen_range(0.2..4.0);
        let s = rng.gen_range(0..n);
        episodes.push(Episode {
            kind: FaultKind::Pause,
            start: at,
            end: at + len,
            impaired: vec![s],
            begin: vec![Fault::Pause(s)],
            finish: vec![Fault::Resume(s)],
        });
        if rng.gen_bool(0.5) {
            let links: Vec<(NodeId, NodeId)> = (0..n)
                .filter(|&u| u != s)
                .flat_map(|u| [(servers[s], servers[u]), (servers[u], servers[s])])
                .collect();
            episodes.push(Episode {
                kind: FaultKind::Pause,
                start: at,
                end: at + len + rng.gen_range(0.3..1.5),
                impaired: vec![s],
                begin: links.iter().map(|&(a, b)| Fault::Clog(a, b)).collect(),
                finish: links.iter().map(|&(a, b)| Fault::Unclog(a, b)).collect(),
            });
        }
        if rng.gen_bool(0.5) {
            let u = (s + rng.gen_range(1..n)) % n;
            let crash = (at + len - rng.gen_range(0.0..0.15)).max(at);
            let down = rng.gen_range(0.001..0.06);
            episodes.push(Episode::kill(crash, crash + down, vec![u]));
        }
    }

    // Disk errors (durable mode only; drawn in both modes so the schedule
    // does not depend on the mode beyond this).
    for _ in 0..rng.gen_range(1..=2) {
        // Healed (and restarted) by the nemesis itself, before `CHAOS`.
        let at = rng.gen_range(1.0..chaos - 4.5);
        let len = rng.gen_range(0.2..3.0);
        let s = rng.gen_range(0..n);
        let (writes, syncs) = match rng.gen_range(0..10) {
            0..=3 => (true, false),
            4..=7 => (false, true),
            _ => (true, true),
        };
        if mode == Mode::Durable {
            episodes.push(Episode {
                kind: FaultKind::Disk,
                start: at,
                end: at + len,
                impaired: vec![s],
                begin: vec![Fault::DiskFail {
                    server: s,
                    writes,
                    syncs,
                }],
                finish: vec![Fault::DiskHeal(s)],
            });
        }
    }

    // A rolling restart, in a random order, in half the seeds.
    if rng.gen_bool(0.5) {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut t = rng.gen_range(1.0..chaos / 3.0);
        for s in order {
            let down = rng.gen_range(0.05..1.5);
            if t + down >= chaos - 1.0 {
                break;
            }
            let mut kill = Episode::kill(t, t + down, vec![s]);
            kill.kind = FaultKind::Rolling;
            episodes.push(kill);
            t += down + CATCHUP + rng.gen_range(0.2..2.0);
        }
    }

    // With several managers (drawn from a hash of the seed, so the stream
    // above stays as with one): a second manager kill, a manager cut off
    // from the other managers (its control-group replica isolated: a
    // leader loses its lease, another takes over, and the isolated one
    // must stop planning), and a manager cut off from the servers (it
    // hears no heartbeat: a leader among them sees every server fall
    // silent).
    if m > 1 {
        let draw = |k: u64| seed_draw(seed, k);
        let pick = |k: u64| ((draw(k) * m as f64) as usize).min(m - 1);
        let at = 5.0 + (chaos - 12.0) * draw(53);
        let victim = pick(54);
        episodes.push(Episode {
            kind: FaultKind::Manager,
            start: at,
            end: at + 0.5 + 5.0 * draw(55),
            impaired: vec![],
            begin: vec![Fault::KillManager(victim)],
            finish: vec![Fault::RestartManager(victim)],
        });
        for (k, peers) in [(56, true), (58, false)] {
            let at = 2.0 + (chaos - 12.0) * draw(k);
            let victim = managers[pick(k + 1)];
            let others: Vec<NodeId> = if peers {
                managers.iter().copied().filter(|&o| o != victim).collect()
            } else {
                servers.to_vec()
            };
            let links: Vec<(NodeId, NodeId)> = others
                .iter()
                .flat_map(|&o| [(victim, o), (o, victim)])
                .collect();
            episodes.push(Episode {
                kind: FaultKind::Manager,
                start: at,
                end: at + 1.0 + 9.0 * draw(k + 100),
                impaired: vec![],
                begin: links.iter().map(|&(a, b)| Fault::Clog(a, b)).collect(),
                finish: links.iter().map(|&(a, b)| Fault::Unclog(a, b)).collect(),
            });
        }
    }

    episodes.retain(|e| enabled.contains(e.kind));

    // Disk wipes (durable only), drawn from a hash of the seed so that the
    // draws above stay put. A wipe happens only while every other server is
    // up and caught up (a majority of every group still has the data); the
    // others may fail right after it as drawn (a wiped replica must then
    // not help elect a leader that lacks what it had acknowledged), but the
    // wiped server itself is left alone from CATCHUP before the wipe until
    // 2 * CATCHUP after its restart, and no other disk is wiped meanwhile:
    // one server at a time is rebuilt from the others (see ARCHITECTURE.md
    // on replacing a disk).
    if mode == Mode::Durable && enabled.contains(FaultKind::Wipe) {
        let wipes = 1 + (seed_draw(seed, 10) * 2.0) as u64;
        for w in 0..wipes {
            let draw = |k: u64| seed_draw(seed, 11 + 3 * w + k);
            let at = 2.0 + draw(0) * (chaos - 8.0);
            let down = 0.05 + draw(1) * 2.0;
            let s = ((draw(2) * n as f64) as usize).min(n - 1);
            let (lo, hi) = (at - CATCHUP, at + down + 2.0 * CATCHUP);
            let wipe = Episode {
                kind: FaultKind::Wipe,
                start: at,
                end: at + down,
                impaired: vec![s],
                begin: vec![Fault::Wipe(s)],
                finish: vec![Fault::Restart(s)],
            };
            let conflicts = |e: &Episode| {
                let touches = e.impaired.contains(&s) || e.kind == FaultKind::Wipe;
                touches && e.end > lo && e.start < hi
            };
            // Only while every other server is up and caught up, as for a
            // memory-mode kill: a wipe must leave a majority with the data.
            let others: Vec<&Episode> = episodes.iter().filter(|e| !conflicts(e)).collect();
            if kill_is_safe_after(&wipe, &others, n, WIPE_CATCHUP) {
                episodes.retain(|e| !conflicts(e));
                episodes.push(wipe);
            }
        }
    }
    // Permanent loss of one server (with a spare to take its replicas),
    // drawn from a hash of the seed like the wipes: only while every other
    // server is up and caught up, so that every group keeps a majority
    // with the data. In memory mode the minority rule then drops every
    // later kill (the lost server never comes back).
    if enabled.contains(FaultKind::Lose) && n > REPLICAS {
        let s = ((seed_draw(seed, 22) * n as f64) as usize).min(n - 1);
        // The first of a few drawn times at which it is safe, if any.
        for k in 0..6 {
            let at = 5.0 + seed_draw(seed, 23 + k) * (chaos - 17.0);
            let lose = Episode {
                kind: FaultKind::Lose,
                start: at,
                // Never over (finite: episode times become durations).
                end: 1e9,
                impaired: vec![s],
                begin: vec![Fault::Lose(s)],
                finish: Vec::new(),
            };
            let others: Vec<&Episode> = episodes.iter().collect();
            if kill_is_safe(&lose, &others, n) {
                // A disk wiped later would leave some group with one
                // replica holding the data and one that must not vote
                // until a leader caught it up: no leader ever again.
                episodes.retain(|e| e.kind != FaultKind::Wipe || e.start < at);
                episodes.push(lose);
                break;
            }
        }
    }
    match mode {
        Mode::Memory => minority_kills_only(episodes, n),
        Mode::Durable => (episodes, 0),
    }
}

/// [`scenario`] with the faults of `config` only.
pub async fn scenario_with(config: Config) -> Summary {
    let Config { mode, print, .. } = config;
    let handle = Handle::current();
    let seed = handle.seed();
    let enabled = config.enabled(seed);
    let shape = Shape::for_seed(seed);
    if print {
        println!(
            "{mode:?} seed {seed}: reproduce with `MADSIM_TEST_SEED={seed} cargo test --release --features sim --test sim {} -- --exact`",
            mode.test_name()
        );
    }
    stats::reset();
    let mut rng = madsim::rand::thread_rng();
    let net = NetSim::current();
    // Drawn even when disabled, so the rest of the schedule stays put.
    let mut loss: f64 = rng.gen_range(0.01..0.03);
    let mut max_latency_ms: u64 = rng.gen_range(2..=20);
    let mut dup: f64 = rng.gen_range(0.01..0.05);
    if !enabled.contains(FaultKind::Loss) {
        loss = 0.0;
    }
    if !enabled.contains(FaultKind::Dup) {
        dup = 0.0;
    }
    // Per thread, and a simulation runs on one thread: set on every run.
    crate::rt::sim_rt::set_duplication(dup);
    let coordinator_faults = if enabled.contains(FaultKind::Coordinator) {
        0.02 + 0.1 * seed_draw(seed, 6)
    } else {
        0.0
    };
    crate::client::faults::set_coordinator_faults(coordinator_faults);
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
    let manager_addrs: Vec<SocketAddr> = (0..manager_count(seed)).map(manager_addr_i).collect();
    let mut client_config = ClientConfig::with_managers(manager_addrs.clone());
    client_config.command_timeout = Duration::from_millis(rng.gen_range(1500..=5000));
    client_config.attempt_timeout = Duration::from_millis(rng.gen_range(200..=1000));
    // One client in four is slow: its cached leaders go stale between
    // commands, so it is the one to meet a deposed leader.
    let think_ms: Vec<(u64, u64)> = (0..CLIENTS)
        .map(|_| {
            if rng.gen_bool(0.25) {
                (200, 2000)
            } else {
                (0, 20)
            }
        })
        .collect();

    // A short --dead-after when servers may be lost for good (4–7 s);
    // else the production default, which no run reaches.
    let lose = enabled.contains(FaultKind::Lose) && shape.has_spare();
    let dead_after = if lose {
        Duration::from_secs_f64(4.0 + 3.0 * seed_draw(seed, 20))
    } else {
        ManagerConfig::DEAD_AFTER_DEFAULT
    };
    // Range splits: by an operator, and in half of those seeds by the
    // manager too, past a small key count.
    let splits = enabled.contains(FaultKind::Split);
    let n = shape.servers;
    let joins = enabled.contains(FaultKind::Join);
    // Which server an operator drains, and when (a draw of the seed): only
    // where the cluster can afford it, with one server more lost for good
    // (else the lost server's replicas have nowhere to go, and stay).
    let may_lose = enabled.contains(FaultKind::Lose) && n > REPLICAS;
    let affordable = n + usize::from(joins) >= REPLICAS + 1 + usize::from(may_lose);
    let drain = (enabled.contains(FaultKind::Drain) && affordable).then(|| {
        let at = Duration::from_secs_f64(5.0 + 15.0 * seed_draw(seed, 40));
        (
            at,
            ((seed_draw(seed, 41) * n as f64) as u64).min(n as u64 - 1),
        )
    });
    let split = if splits && seed_draw(seed, 30) < 0.5 {
        crate::manager::SplitThresholds {
            bytes: 0,
            keys: 8 + (12.0 * seed_draw(seed, 31)) as u64,
        }
    } else {
        crate::manager::SplitThresholds::default()
    };
    let manager_config = shape.manager_config(dead_after, split);
    let map = manager_config.build_map().expect("valid cluster config");
    let tables = shape.universe();
    let universe: Vec<Key> = tables
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |num| Key::new(t.as_str(), num)))
        .collect();
    let values: Vec<Vec<u8>> = VALUES.iter().map(|v| v.as_bytes().to_vec()).collect();
    let key_index: BTreeMap<Key, u64> = universe.iter().cloned().zip(0..).collect();
    let mut model = Model::new(seed, CLIENTS, universe, &values);
    if splits {
        // A key's partition changes with splits, and a later write acked
        // by the new partition does not fence a command still in flight to
        // the old one (another session table): fence by key alone.
        model.set_groups(|k| key_index[k]);
    } else {
        model.set_groups(|k| map.partition_of(k).expect("universe keys are mapped").id);
    }
    let shared = Arc::new(Shared {
        seed,
        start: Instant::now(),
        map,
        model: Mutex::new(model),
        history: Mutex::new(Vec::new()),
        commands: Mutex::new(Vec::new()),
        healed: AtomicBool::new(false),
        client_config,
        think_ms,
        liveness_errors: Mutex::new(vec![String::new(); CLIENTS]),
        trace: std::env::var_os("DISTKV_SIM_TRACE").is_some(),
        tables,
        bank: shape.bank_accounts(),
        lost: Mutex::new(BTreeSet::new()),
        short_dead_after: lose,
        splits,
        joined: joins.then_some(n as u64),
        drain,
        drained: AtomicBool::new(false),
    });

    // With several managers, each keeps its replica of the control group
    // on a disk of its own (durable mode), which a kill crashes.
    let peers: Vec<SocketAddr> = (0..manager_addrs.len()).map(manager_peer).collect();
    let manager_disks: Vec<SimDisk> = peers.iter().map(|_| SimDisk::new()).collect();
    let managers: Vec<NodeId> = (0..manager_addrs.len())
        .map(|i| {
            let mut config = manager_config.clone();
            config.listen_addr = manager_addrs[i];
            if peers.len() > 1 {
                config.control = Some(crate::manager::control::ControlConfig {
                    node_id: i as u64,
                    peers: peers.clone(),
                    // Always on disk: `--peers` keeps the control log
                    // durable whatever the servers do.
                    storage: Some(StorageConfig {
                        log_dir: "log".into(),
                        db_dir: "db".into(),
                        group_commit: GroupCommitConfig {
                            batch_size: 64,
                            batch_timeout: Duration::ZERO,
                        },
                        segment_bytes_max: 16 * 1024,
                        checkpoint_log_bytes: 32 * 1024,
                    }),
                });
            }
            let disk = manager_disks[i].clone();
            handle
                .create_node()
                .name(if peers.len() > 1 {
                    format!("manager{i}")
                } else {
                    "manager".to_string()
                })
                .ip(manager_addrs[i].ip())
                .init(move || {
                    let (config, disk) = (config.clone(), disk.clone());
                    async move {
                        if let Err(e) = run_manager(SimRuntime, disk, config).await {
                            panic!("manager stopped: {e}");
                        }
                    }
                })
                .build()
                .id()
        })
        .collect();
    // Compact each Raft log after a handful to a few dozen applied
    // entries, so that compaction, snapshot sends and installs (also racing
    // with appends, leader changes and restarts) happen in most runs.
    // One seed in ten keeps the production default.
    let compact_entries = if seed_draw(seed, 1) < 0.1 {
        RaftTuning::default().compact_entries
    } else {
        seed_draw_log(seed, 2, 2, 64)
    };
    // Half the seeds expire idle client sessions after 12–40 s of log time
    // (a client's command deadline is at most 5 s, below half of it), so
    // expiry runs; the others keep the default of minutes.
    let session_ttl = if seed_draw(seed, 4) < 0.5 {
        Duration::from_secs(seed_draw_log(seed, 5, 12, 40))
    } else {
        RaftTuning::default().session_ttl
    };
    // Checkpoints (snapshot files + log purge) after 1–64 KiB of log.
    let checkpoint_log_bytes = seed_draw_log(seed, 3, 1024, 64 * 1024);
    let disks: Vec<SimDisk> = (0..n).map(|_| SimDisk::new()).collect();
    // A server that stops after an injected disk error reports it here
    // (server, incarnation, error); see the watcher below.
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, String)>();
    // Bumped by the nemesis before every restart of a server.
    let incarnations: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    // Syncs take time, so kills land in the middle of some. Disk profiles:
    // all fast (0–8 ms), some slow (10–60 ms, each disk with odds 1 in 3),
    // or all slow but one, so that a leader with the fast disk commits while
    // both followers' copies are still unsynced.
    let (profile, fast) = (rng.gen_range(0..10), rng.gen_range(0..n));
    let slow: Vec<bool> = (0..n)
        .map(|i| match profile {
            0..=2 => false,
            3..=5 => rng.gen_bool(0.33),
            _ => i != fast,
        })
        .collect();
    let servers: Vec<NodeId> = (0..n)
        .map(|i| {
            let storage = (mode == Mode::Durable).then(|| {
                let sync_us = if slow[i] {
                    rng.gen_range(10_000..=60_000)
                } else {
                    rng.gen_range(0..=8000)
                };
                disks[i].set_sync_delay(Duration::from_micros(sync_us));
                StorageConfig {
                    checkpoint_log_bytes,
                    ..storage_config(&mut rng, i)
                }
            });
            let config = ServerConfig {
                node_id: i as u64,
                listen_addr: server_addr(i),
                advertise_addr: server_addr(i),
                managers: manager_addrs.clone(),
                fixed_map: None,
                join: false,
                heartbeat_interval: ServerConfig::HEARTBEAT_INTERVAL_DEFAULT,
                storage,
                raft_tick: ServerConfig::RAFT_TICK_DEFAULT,
                raft: RaftTuning {
                    compact_entries,
                    session_ttl,
                    ..RaftTuning::default()
                },
            };
            let disk = disks[i].clone();
            let (stop_tx, incarnations) = (stop_tx.clone(), incarnations.clone());
            handle
                .create_node()
                .name(format!("server{i}"))
                .ip(server_addr(i).ip())
                // `init` runs again on every restart, with empty memory (and,
                // when durable, whatever the disk kept).
                .init(move || {
                    let (config, disk) = (config.clone(), disk.clone());
                    let stop_tx = stop_tx.clone();
                    let incarnation = incarnations[i].load(Ordering::SeqCst);
                    async move {
                        if let Err(e) = run_server(SimRuntime, disk.clone(), config).await {
                            // After an injected disk error, stopping is
                            // what the server must do (fail-stop): the
                            // watcher kills the node, as the process exits.
                            if disk.failure_count() > 0 {
                                let _ = stop_tx.send((i, incarnation, e.to_string()));
                                return std::future::pending().await;
                            }
                            panic!("seed {seed}: server {i} stopped: {e}");
                        }
                    }
                })
                .build()
                .id()
        })
        .collect();
    if enabled.contains(FaultKind::Transfer) {
        let node = handle.create_node().name("admin").ip(admin_ip()).build();
        node.spawn(admin_main(shared.clone()));
    }
    if splits {
        let node = handle
            .create_node()
            .name("splitter")
            .ip(splitter_ip())
            .build();
        node.spawn(splitter_main(shared.clone()));
    }
    if joins {
        // A new machine, with a fast disk, that joins at 3–15 s and is
        // never killed.
        let join_at = Duration::from_secs_f64(3.0 + 12.0 * seed_draw(seed, 42));
        let storage = (mode == Mode::Durable).then(|| StorageConfig {
            checkpoint_log_bytes,
            ..storage_config(&mut rng, n)
        });
        let config = ServerConfig {
            node_id: n as u64,
            listen_addr: server_addr(n),
            advertise_addr: server_addr(n),
            managers: manager_addrs.clone(),
            fixed_map: None,
            join: true,
            heartbeat_interval: ServerConfig::HEARTBEAT_INTERVAL_DEFAULT,
            storage,
            raft_tick: ServerConfig::RAFT_TICK_DEFAULT,
            raft: RaftTuning {
                compact_entries,
                session_ttl,
                ..RaftTuning::default()
            },
        };
        let disk = SimDisk::new();
        handle
            .create_node()
            .name(format!("server{n}"))
            .ip(server_addr(n).ip())
            .init(move || {
                let (config, disk) = (config.clone(), disk.clone());
                async move {
                    sleep(join_at).await;
                    if let Err(e) = run_server(SimRuntime, disk, config).await {
                        panic!("seed {seed}: server {n} (joined) stopped: {e}");
                    }
                }
            })
            .build();
    }
    if enabled.contains(FaultKind::Move) {
        let node = handle.create_node().name("mover").ip(mover_ip()).build();
        node.spawn(mover_main(shared.clone()));
    }
    if drain.is_some() {
        let node = handle
            .create_node()
            .name("drainer")
            .ip(drainer_ip())
            .build();
        node.spawn(drainer_main(shared.clone()));
    }
    let mut clients = Vec::new();
    let mut client_ids = Vec::new();
    let mut client_nodes = Vec::new();
    for i in 0..CLIENTS {
        let node = handle
            .create_node()
            .name(format!("client{i}"))
            .ip(client_ip(i))
            .build();
        client_ids.push(node.id());
        clients.push(node.spawn(client_main(i, shared.clone())));
        client_nodes.push(node);
    }

    // Fail-stops: the watcher kills a server node that stopped after a
    // disk error (unless the nemesis restarted it meanwhile), and counts it.
    let fail_stops: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; n]));
    {
        let (handle, servers, incarnations) =
            (handle.clone(), servers.clone(), incarnations.clone());
        let (fail_stops, shared) = (fail_stops.clone(), shared.clone());
        madsim::task::spawn(async move {
            while let Some((s, incarnation, error)) = stop_rx.recv().await {
                if shared.trace {
                    eprintln!(
                        "[sim] {:.3?} server {s} stopped after a disk error: {error}",
                        shared.elapsed()
                    );
                }
                if incarnations[s].load(Ordering::SeqCst) == incarnation {
                    fail_stops.lock().unwrap()[s] += 1;
                    handle.kill(servers[s]);
                }
            }
        });
    }

    let (episodes, kills_skipped) = draw_schedule(
        &mut rng,
        seed,
        mode,
        enabled,
        &servers,
        &client_ids,
        &managers,
    );
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    let (mut partitions, mut pauses, mut rolling) = (0, 0, 0);
    for e in episodes {
        match e.kind {
            FaultKind::Partition if e.start < CHAOS.as_secs_f64() => partitions += 1,
            FaultKind::Pause if e.start < CHAOS.as_secs_f64() => pauses += 1,
            FaultKind::Rolling if e.start < CHAOS.as_secs_f64() => rolling += 1,
            _ => {}
        }
        let (start, end) = (
            Duration::from_secs_f64(e.start),
            Duration::from_secs_f64(e.end),
        );
        faults.extend(e.begin.into_iter().map(|f| (start, f)));
        faults.extend(e.finish.into_iter().map(|f| (end, f)));
    }
    // Stable: simultaneous faults keep their drawing order.
    faults.sort_by_key(|(at, _)| *at);

    let (mut kills, mut clogs, mut disk_faults) = (0, 0, 0);
    // Per server: when it last started running again (restart or resume),
    // and, while its disk fails, its incarnation and fail-stop count when
    // the fault began.
    let mut running_since: Vec<Duration> = vec![Duration::ZERO; n];
    let mut disk_faulty: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let restart = |s: usize| {
        incarnations[s].fetch_add(1, Ordering::SeqCst);
        handle.restart(servers[s]);
    };
    // Overlapping episodes may hit one server twice: a server is down (or
    // frozen) while any of its episodes lasts.
    let mut down: BTreeMap<usize, usize> = BTreeMap::new();
    let mut paused: BTreeMap<usize, usize> = BTreeMap::new();
    let mut managers_down: BTreeMap<usize, usize> = BTreeMap::new();
    let mut clogged: BTreeMap<(NodeId, NodeId), usize> = BTreeMap::new();
    // `DISTKV_SIM_TRACE=1`: print every fault as it is injected.
    let trace = shared.trace;
    if trace && kills_skipped > 0 {
        eprintln!("[sim] {kills_skipped} kill(s) left out by the memory-mode minority rule");
    }
    for (at, fault) in faults {
        if at >= CHAOS {
            break;
        }
        sleep_until(shared.start + at).await;
        if trace {
            eprintln!("[sim] {at:.3?} {fault:?}");
        }
        match fault {
            Fault::KillManager(i) => {
                // Down while any of its episodes lasts.
                let n = managers_down.entry(i).or_default();
                *n += 1;
                if *n == 1 {
                    handle.kill(managers[i]);
                    if managers.len() > 1 {
                        manager_disks[i].crash(|n| rng.gen_range(0..n));
                    }
                    kills += 1;
                }
            }
            Fault::RestartManager(i) => {
                let n = managers_down.entry(i).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    managers_down.remove(&i);
                    handle.restart(managers[i]);
                }
            }
            Fault::Kill(s) => {
                let n = down.entry(s).or_default();
                *n += 1;
                if *n == 1 {
                    if paused.remove(&s).is_some() {
                        handle.resume(servers[s]);
                    }
                    handle.kill(servers[s]);
                    // A power cut: unsynced bytes are lost, or kept in part
                    // (possibly torn). Acknowledged writes must all survive,
                    // and a command in flight may or may not have happened,
                    // which the model's usual rules already allow. (In
                    // memory mode the disk is unused.)
                    if mode == Mode::Durable {
                        disks[s].crash(|n| rng.gen_range(0..n));
                    }
                    kills += 1;
                }
            }
            Fault::Wipe(s) => {
                let n = down.entry(s).or_default();
                *n += 1;
                if *n == 1 {
                    if paused.remove(&s).is_some() {
                        handle.resume(servers[s]);
                    }
                    handle.kill(servers[s]);
                }
                disks[s].wipe();
                stats::count(Event::DiskWiped);
            }
            Fault::Lose(s) => {
                // Down for good: its count never returns to zero.
                let n = down.entry(s).or_default();
                *n += 1;
                if *n == 1 {
                    if paused.remove(&s).is_some() {
                        handle.resume(servers[s]);
                    }
                    handle.kill(servers[s]);
                    kills += 1;
                }
                shared.lost.lock().unwrap().insert(s as u64);
                stats::count(Event::ServerLost);
            }
            Fault::Restart(s) => {
                // Always after a kill: restart alone cannot re-bind the address.
                if let Some(n) = down.get_mut(&s) {
                    *n -= 1;
                    if *n == 0 {
                        down.remove(&s);
                        restart(s);
                        running_since[s] = at;
                    }
                }
            }
            Fault::DiskFail {
                server: s,
                writes,
                syncs,
            } => {
                disks[s].set_fail_writes(writes);
                disks[s].set_fail_syncs(syncs);
                disks[s].take_failures();
                let stopped = fail_stops.lock().unwrap()[s];
                disk_faulty.insert(s, (incarnations[s].load(Ordering::SeqCst), stopped));
                disk_faults += 1;
            }
            Fault::DiskHeal(s) => {
                disks[s].set_fail_writes(false);
                disks[s].set_fail_syncs(false);
                let failures = disks[s].take_failures();
                let (incarnation, stopped) = disk_faulty.remove(&s).unwrap_or_default();
                // Fail-stop: once its write-ahead log failed (a segment
                // write or fsync; a failed checkpoint is harmless, the log
                // still has everything), the server must stop rather than
                // go on, or hang, on a log it cannot extend. Only checked if
                // it has been running, the same incarnation, since then.
                let fatal = failures
                    .iter()
                    .find(|f| f.op != FailedOp::SyncDir && f.path.starts_with(format!("log{s}")));
                if let Some(f) = fatal {
                    let failed_at = f.at.saturating_duration_since(shared.start);
                    let unchanged = incarnations[s].load(Ordering::SeqCst) == incarnation
                        && fail_stops.lock().unwrap()[s] == stopped
                        && !down.contains_key(&s)
                        && !paused.contains_key(&s);
                    if unchanged
                        && at.saturating_sub(failed_at.max(running_since[s])) >= FAIL_STOP_BOUND
                    {
                        panic!(
                            "seed {seed}: fail-stop: server {s} was still running at {at:?}, \
                             {:?} after its write-ahead log failed ({:?} of {} at {failed_at:?})",
                            at - failed_at,
                            f.op,
                            f.path.display()
                        );
                    }
                }
                // Restarted as after a power cut (unless a kill holds it
                // down: its restart comes later).
                if !down.contains_key(&s) {
                    if paused.remove(&s).is_some() {
                        handle.resume(servers[s]);
                    }
                    handle.kill(servers[s]);
                    disks[s].crash(|n| rng.gen_range(0..n));
                    restart(s);
                    running_since[s] = at;
                }
            }
            Fault::Pause(s) => {
                if !down.contains_key(&s) {
                    let n = paused.entry(s).or_default();
                    *n += 1;
                    if *n == 1 {
                        handle.pause(servers[s]);
                    }
                }
            }
            Fault::Resume(s) => {
                if let Some(n) = paused.get_mut(&s) {
                    *n -= 1;
                    if *n == 0 {
                        paused.remove(&s);
                        handle.resume(servers[s]);
                        running_since[s] = at;
                    }
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
    for s in paused.keys() {
        handle.resume(servers[*s]);
    }
    let lost = shared.lost.lock().unwrap().clone();
    for s in down.keys() {
        if !lost.contains(&(*s as u64)) {
            restart(*s);
        }
    }
    assert!(
        disk_faulty.is_empty(),
        "disk faults end before CHAOS, so the nemesis heals them"
    );
    net.update_config(|c| c.packet_loss_rate = 0.0);
    let copies = crate::rt::sim_rt::copies_sent();
    crate::rt::sim_rt::set_duplication(0.0);
    crate::client::faults::set_coordinator_faults(0.0);
    shared.healed.store(true, Ordering::SeqCst);
    let healed_at = shared.elapsed();
    for (i, client) in clients.into_iter().enumerate() {
        let left = (healed_at + LIVENESS_BOUND).saturating_sub(shared.elapsed());
        match madsim::time::timeout(left, client).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("seed {seed}: client {i} task failed: {e:?}"),
            Err(_) => panic!(
                "seed {seed}: liveness: client {i} did not finish its commands within \
                 {LIVENESS_BOUND:?} after everything was healed at {healed_at:?}; last error: {}",
                shared.liveness_errors.lock().unwrap()[i]
            ),
        }
    }

    // Stability: nothing fails any more, so leaders must stay put and every
    // command must be quick. A leader that steps down without cause, or a
    // group that holds elections it does not need, fails here.
    sleep(QUIET_SETTLE).await;
    let elections_before = stats::snapshot().get(Event::Election);
    let quiet_from = shared.elapsed();
    let quiet: Vec<_> = client_nodes
        .iter()
        .enumerate()
        .map(|(i, node)| node.spawn(quiet_main(i, shared.clone())))
        .collect();
    for (i, task) in quiet.into_iter().enumerate() {
        if let Err(e) = task.await {
            panic!("seed {seed}: client {i} task failed: {e:?}");
        }
    }
    let quiet_elections = stats::snapshot().get(Event::Election) - elections_before;
    if quiet_elections > 0 {
        panic!(
            "seed {seed}: stability: {quiet_elections} leader election(s) in the quiet phase \
             ({quiet_from:.1?} to {:.1?}: no faults, everything healed and settled)",
            shared.elapsed()
        );
    }
    // Atomicity of the transactions, against the final contents.
    let final_state = match client_nodes[0].spawn(read_everything(shared.clone())).await {
        Ok(contents) => contents,
        Err(e) => panic!("seed {seed}: client 0 task failed: {e:?}"),
    };
    // The bank kept its total.
    let balances: BTreeMap<&Key, Option<&Vec<u8>>> = shared
        .bank
        .iter()
        .map(|key| (key, final_state.get(key)))
        .collect();
    if let Err(e) = bank_total_is_kept(shared.bank.len(), &balances) {
        panic!("seed {seed}: bank: in the final contents: {e}");
    }
    let atomicity_checked = {
        let commands = shared.commands.lock().unwrap();
        match check_atomicity(seed, &commands, &final_state) {
            Ok(n) => n,
            Err(violation) => panic!("{violation}"),
        }
    };
    // The manager's view (what `admin` shows) catches up with the healed
    // cluster: every server up, every partition led and reported by all
    // its replicas.
    let mut keys_per_table: BTreeMap<String, u64> = BTreeMap::new();
    for key in final_state.keys() {
        *keys_per_table.entry(key.table.clone()).or_default() += 1;
    }
    if let Err(e) = client_nodes[0]
        .spawn(check_control_plane(shared.clone(), keys_per_table))
        .await
    {
        panic!("seed {seed}: client 0 task failed: {e:?}");
    }
    let end = shared.elapsed();

    // The whole history, checked for linearizability (strict
    // serializability of the multi-operation commands).
    let history = std::mem::take(&mut *shared.history.lock().unwrap());
    // `DISTKV_SIM_HISTORY=<file>`: keep the history (JSON lines, the
    // `benchmark check` format) to study a failure.
    if let Some(path) = std::env::var_os("DISTKV_SIM_HISTORY") {
        let lines: Vec<String> = history
            .iter()
            .map(|r| serde_json::to_string(r).expect("history records encode"))
            .collect();
        if let Err(e) = std::fs::write(&path, lines.join("\n") + "\n") {
            eprintln!("cannot write the history to {path:?}: {e}");
        }
    }
    let check_config = CheckConfig {
        max_states: LINEARIZABILITY_MAX_STATES,
        ..CheckConfig::default()
    };
    let linearizability = match checker::check(&history, &check_config) {
        Err(e) => panic!("seed {seed}: harness bug: malformed history: {e}"),
        Ok(Outcome::Ok(report)) => Linearizability::Checked {
            partitions: report.partitions,
            states: report.states_explored,
        },
        Ok(Outcome::Unknown(gave_up)) => Linearizability::GaveUp {
            states: gave_up.states_explored,
        },
        Ok(Outcome::Violation(violation)) => {
            panic!("seed {seed}: linearizability: {violation}")
        }
    };

    let model = shared.model.lock().unwrap();
    let summary = Summary {
        mode,
        seed,
        shape,
        faults: enabled,
        counts: model.counts.clone(),
        kills,
        kills_skipped,
        clogs,
        partitions,
        pauses,
        rolling,
        disk_faults,
        fail_stops: fail_stops.lock().unwrap().iter().sum(),
        loss: format!("{:.1}%", loss * 100.0),
        dup: format!("{:.1}% ({copies} copies)", dup * 100.0),
        max_latency_ms,
        command_timeout: shared.client_config.command_timeout,
        attempt_timeout: shared.client_config.attempt_timeout,
        end,
        linearizability,
        atomicity_checked,
        compact_entries,
        events: stats::snapshot(),
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
/// - `linearizability`: the final WGL check of the whole history failed
/// - `atomicity`: a transaction took effect at some of its keys only, or a
///   failed one took effect ([`check_atomicity`])
/// - `bank`: a read of every bank account, or the final contents, did not
///   add up to the bank's total ([`bank_turn`])
/// - `control-plane`: the manager's status did not show the healed cluster
///   in time ([`check_control_plane`])
///   (e.g. a stale read of another client's key);
/// - `raft-safety`: a Raft safety assertion inside a server fired (e.g. a
///   committed entry about to be overwritten);
/// - `liveness`: no progress after everything was healed;
/// - `connect`: a client never got the partition map;
/// - `node-stopped`: a server or the manager exited with an error (other
///   than a server stopping after its disk failed, which it must);
/// - `fail-stop`: a server whose write-ahead log failed kept running;
/// - `client-task`: a client node's task died;
/// - `deadlock`: madsim found every task blocked with no timer pending;
/// - `time-limit`: madsim's time limit was exceeded;
/// - `panic`: anything else (an assertion inside the library, say).
pub fn failed_check(message: &str) -> &'static str {
    let is = |s: &str| message.contains(s);
    if is(": liveness: ") {
        "liveness"
    } else if is(": stability: ") {
        "stability"
    } else if is(": linearizability: ") {
        "linearizability"
    } else if is(": atomicity: ") {
        "atomicity"
    } else if is(": bank: ") {
        "bank"
    } else if is(": control-plane: ") {
        "control-plane"
    } else if is("Raft safety") {
        "raft-safety"
    } else if is(" cannot connect: ") {
        "connect"
    } else if is(" stopped: ") && (is(": server ") || message.starts_with("manager stopped")) {
        "node-stopped"
    } else if is(": fail-stop: ") {
        "fail-stop"
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

/// A random partition, as the manager's status shows it, if it has a
/// leader: with the leader and its address (a server that joined is not in
/// the initial map).
async fn random_led_partition(
    client: &Client<SimRuntime>,
    rng: &mut impl Rng,
) -> Option<(
    crate::manager::status::PartitionInfo,
    crate::map::NodeId,
    SocketAddr,
)> {
    let status = client.cluster_status().await.ok()?;
    let p = status.partitions[rng.gen_range(0..status.partitions.len())].clone();
    let leader = p.leader?;
    let addr = status.servers.iter().find(|s| s.id == leader)?.addr;
    Some((p, leader, addr))
}

/// The operator of [`FaultKind::Transfer`]: until healed, moves a random
/// partition's leadership to another of its replicas now and then.
async fn admin_main(shared: Arc<Shared>) {
    let Ok(client) = Client::connect(SimRuntime, shared.client_config.clone()).await else {
        return; // The manager is down for long: no operator today.
    };
    let mut rng = madsim::rand::thread_rng();
    while !shared.healed.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(rng.gen_range(500..=3000))).await;
        if shared.healed.load(Ordering::SeqCst) {
            break;
        }
        let Some((p, leader, addr)) = random_led_partition(&client, &mut rng).await else {
            continue;
        };
        let others: Vec<crate::map::NodeId> = p
            .replicas
            .iter()
            .copied()
            .filter(|&r| r != leader)
            .collect();
        if others.is_empty() {
            continue; // A partition with one replica has no one to hand over to.
        }
        let to = others[rng.gen_range(0..others.len())];
        let outcome = client.transfer_leader(addr, p.id, to).await;
        if shared.trace {
            eprintln!(
                "[sim] {:.3?} admin: transfer partition {} from server {leader} to {to}: {outcome:?}",
                shared.elapsed(),
                p.id
            );
        }
        if outcome.is_ok() {
            stats::count(Event::LeaderTransfer);
        }
    }
}

/// The operator of [`FaultKind::Move`]: until healed, moves a random
/// partition's random voter to a live server that holds no replica of it.
async fn mover_main(shared: Arc<Shared>) {
    use crate::manager::status::ServerState;
    let Ok(client) = Client::connect(SimRuntime, shared.client_config.clone()).await else {
        return; // The manager is down for long: no operator today.
    };
    let mut rng = madsim::rand::thread_rng();
    while !shared.healed.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(rng.gen_range(1000..=4000))).await;
        if shared.healed.load(Ordering::SeqCst) {
            break;
        }
        let Ok(status) = client.cluster_status().await else {
            continue;
        };
        let p = &status.partitions[rng.gen_range(0..status.partitions.len())];
        let targets: Vec<crate::map::NodeId> = status
            .servers
            .iter()
            .filter(|s| s.state == ServerState::Up && !s.draining)
            .map(|s| s.id)
            .filter(|n| !p.replicas.contains(n) && !p.learners.contains(n))
            .collect();
        if targets.is_empty() || p.replicas.is_empty() {
            continue;
        }
        let from = p.replicas[rng.gen_range(0..p.replicas.len())];
        let to = targets[rng.gen_range(0..targets.len())];
        let outcome = client.move_replica(p.id, from, to).await;
        if shared.trace {
            eprintln!(
                "[sim] {:.3?} mover: move partition {} from server {from} to {to}: {outcome:?}",
                shared.elapsed(),
                p.id
            );
        }
        if outcome.is_ok() {
            stats::count(Event::OperatorMove);
        }
    }
}

/// The operator of [`FaultKind::Drain`]: drains its server at its time, and
/// again every 3 s to the end of the run (a restarted manager forgets a
/// drain, and one restarted just before the healing must hear it again).
async fn drainer_main(shared: Arc<Shared>) {
    let Some((at, node)) = shared.drain else {
        return;
    };
    sleep(at).await;
    let Ok(client) = Client::connect(SimRuntime, shared.client_config.clone()).await else {
        return; // The manager is down for long: no operator today.
    };
    loop {
        let outcome = client
            .server_admin(node, crate::wire::ServerAction::Drain)
            .await;
        if shared.trace {
            eprintln!(
                "[sim] {:.3?} drainer: drain server {node}: {outcome:?}",
                shared.elapsed()
            );
        }
        if outcome.is_ok() {
            shared.drained.store(true, Ordering::SeqCst);
        }
        sleep(Duration::from_secs(3)).await;
    }
}

/// The operator of [`FaultKind::Split`]: until healed, splits a random
/// partition now and then, at a random key inside it or at its middle key.
async fn splitter_main(shared: Arc<Shared>) {
    let Ok(client) = Client::connect(SimRuntime, shared.client_config.clone()).await else {
        return; // The manager is down for long: no operator today.
    };
    let mut rng = madsim::rand::thread_rng();
    let mut done = 0;
    while !shared.healed.load(Ordering::SeqCst) && done < SPLITS_MAX {
        sleep(Duration::from_millis(rng.gen_range(1000..=4000))).await;
        if shared.healed.load(Ordering::SeqCst) {
            break;
        }
        let Some((p, _, addr)) = random_led_partition(&client, &mut rng).await else {
            continue;
        };
        // A key inside (after the first), within the table's universe.
        let size = shared
            .tables
            .iter()
            .find(|(t, _)| *t == p.table)
            .map_or(BANK_ACCOUNTS_PER_PARTITION * 8, |(_, n)| *n);
        let last = p.end.map_or(size.max(p.start + 2), |e| e) - 1;
        let at = if rng.gen_bool(0.5) || last <= p.start {
            None
        } else {
            Some(rng.gen_range(p.start + 1..=last))
        };
        let outcome = client.split_partition(addr, p.id, at).await;
        if shared.trace {
            eprintln!(
                "[sim] {:.3?} splitter: split partition {} at {at:?}: {outcome:?}",
                shared.elapsed(),
                p.id
            );
        }
        if outcome.is_ok() {
            done += 1;
        }
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
    let (think_min, think_max) = shared.think_ms[me];
    while !shared.healed.load(Ordering::SeqCst) {
        if rng.gen_bool(BANK_SHARE) {
            bank_turn(&mut rng, &shared, &mut session, me).await;
        } else {
            let ops = random_command(&mut rng, me, &shared);
            // Errors are expected under faults; the checker has judged the outcome.
            let _ = run_checked(&shared, &mut session, me, ops).await;
        }
        // Now and then a client goes idle for a while: its cached leaders
        // go stale meanwhile.
        let think = if rng.gen_bool(0.03) {
            rng.gen_range(500..=3000)
        } else {
            rng.gen_range(think_min..=think_max)
        };
        sleep(Duration::from_millis(think)).await;
    }

    // Liveness: every partition and every table must work again. Leaders
    // may still be being elected and restarted replicas catching up, so a
    // command that fails is retried (the harness bounds the whole phase).
    let mut commands: Vec<Vec<Op>> = Vec::new();
    for id in shared.partition_ids() {
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
    for (table, n) in &shared.tables {
        let (table, n) = (table.as_str(), *n);
        commands.push(vec![Op::Scan {
            start: Key::new(table, 0),
            end: Key::new(table, n + 10),
        }]);
    }
    // The bank's partitions too: a read of every account.
    commands.push(
        shared
            .bank
            .iter()
            .map(|key| Op::Get { key: key.clone() })
            .collect(),
    );
    for ops in commands {
        let shown = fmt_ops(&ops);
        let bank = ops[0].table() == BANK_TABLE;
        loop {
            let outcome = if bank {
                run_bank_checked(&shared, &mut session, me, ops.clone())
                    .await
                    .map(|_| ())
            } else {
                run_checked(&shared, &mut session, me, ops.clone()).await
            };
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    shared.liveness_errors.lock().unwrap()[me] =
                        format!("command `{shown}` failed at {:?}: {e}", shared.elapsed());
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The quiet phase of one client (see [`QUIET_COMMANDS`]): a fresh
/// connection, commands like the chaos phase's, each of which must succeed
/// within [`QUIET_COMMAND_BOUND`].
async fn quiet_main(me: usize, shared: Arc<Shared>) {
    let seed = shared.seed;
    let client = match Client::connect(SimRuntime, shared.client_config.clone()).await {
        Ok(client) => client,
        Err(e) => panic!("seed {seed}: stability: client {me} cannot connect: {e}"),
    };
    let mut session = client.session();
    let mut rng = madsim::rand::thread_rng();
    for _ in 0..QUIET_COMMANDS {
        let ops = random_command(&mut rng, me, &shared);
        let shown = fmt_ops(&ops);
        let started = shared.elapsed();
        let result = run_checked(&shared, &mut session, me, ops).await;
        let took = shared.elapsed() - started;
        if let Err(e) = result {
            panic!("seed {seed}: stability: client {me}'s command `{shown}` failed at {started:.3?} in the quiet phase: {e}");
        }
        if took > QUIET_COMMAND_BOUND {
            panic!(
                "seed {seed}: stability: client {me}'s command `{shown}` took {took:.3?} \
                 (bound {QUIET_COMMAND_BOUND:?}) at {started:.3?} in the quiet phase"
            );
        }
        sleep(Duration::from_millis(rng.gen_range(0..=100))).await;
    }
}

/// Runs one command, records it in the history and feeds its outcome to the
/// model; panics on a model violation. Returns the client's error, if any.
async fn run_checked(
    shared: &Shared,
    session: &mut Session<SimRuntime>,
    me: usize,
    ops: Vec<Op>,
) -> Result<(), ClientError> {
    let invoked = shared.elapsed();
    let inv = {
        let mut model = shared.model.lock().unwrap();
        model.allow_values(&ops);
        model.invoke(me, &ops, invoked)
    };
    let written = ops.clone();
    let outcome = execute_recorded(shared, session, me, ops, invoked).await;
    let now = shared.elapsed();
    shared.commands.lock().unwrap().push(Recorded {
        client: me,
        invoked,
        ops: written,
        outcome: outcome.clone(),
    });
    if let Err(violation) = shared.model.lock().unwrap().complete(&inv, &outcome, now) {
        panic!("{violation}");
    }
    outcome.map(|_| ())
}

/// Runs one command and records it in the history (for the final
/// linearizability check), without the model.
async fn execute_recorded(
    shared: &Shared,
    session: &mut Session<SimRuntime>,
    me: usize,
    ops: Vec<Op>,
    invoked: Duration,
) -> Result<Vec<OpResult>, ClientError> {
    let parts = split_by_partition(&shared.map, &ops);
    let written = ops.clone();
    let shown = shared.trace.then(|| fmt_ops(&ops));
    let outcome = session.execute(ops).await;
    let now = shared.elapsed();
    if let Some(shown) = shown {
        eprintln!("[sim] client {me} [{invoked:.3?} .. {now:.3?}] `{shown}` -> {outcome:?}");
    }
    {
        let mut history = shared.history.lock().unwrap();
        for (indices, part) in &parts {
            let part_ops: Vec<HistoryOp> = indices
                .iter()
                .map(|&i| match ops_copy_scan(&written[i], part.as_ref()) {
                    Some(op) => op,
                    None => HistoryOp::from_op(&written[i]),
                })
                .collect();
            let part_outcome = outcome.as_ref().map_err(Clone::clone).map(|results| {
                indices
                    .iter()
                    .map(|&i| match (&results[i], part) {
                        (OpResult::Scan(rows), Some(p)) => OpResult::Scan(
                            rows.iter()
                                .filter(|(k, _)| p.table == k.table && p.contains(k.num))
                                .cloned()
                                .collect(),
                        ),
                        (r, _) => r.clone(),
                    })
                    .collect::<Vec<OpResult>>()
            });
            history.push(HistoryRecord::new(
                me as u64,
                invoked.as_nanos() as u64,
                now.as_nanos() as u64,
                part_ops,
                &part_outcome,
            ));
        }
    }
    outcome
}

/// A bank command ([`BANK_TABLE`]): recorded in the history like any
/// other (the model does not know the bank's keys, which every client
/// writes); a read of every account is checked against the total.
async fn run_bank_checked(
    shared: &Shared,
    session: &mut Session<SimRuntime>,
    me: usize,
    ops: Vec<Op>,
) -> Result<Vec<OpResult>, ClientError> {
    let invoked = shared.elapsed();
    let shown = fmt_ops(&ops);
    let outcome = execute_recorded(shared, session, me, ops.clone(), invoked).await;
    if let Ok(results) = &outcome {
        let mut balances: BTreeMap<&Key, Option<&Vec<u8>>> = BTreeMap::new();
        for (op, result) in ops.iter().zip(results) {
            match (op, result) {
                (Op::Get { key }, OpResult::Get(value)) => {
                    balances.insert(key, value.as_ref());
                }
                (Op::Scan { .. }, OpResult::Scan(rows)) => {
                    for key in &shared.bank {
                        balances.insert(key, None);
                    }
                    for (key, value) in rows {
                        balances.insert(key, Some(value));
                    }
                }
                _ => {}
            }
        }
        if balances.len() == shared.bank.len() {
            stats::count(Event::BankRead);
            if let Err(e) = bank_total_is_kept(shared.bank.len(), &balances) {
                panic!(
                    "seed {}: bank: client {me}'s read `{shown}` (invoked at {invoked:.3?}): {e}",
                    shared.seed
                );
            }
        }
    }
    outcome
}

/// A balance: the account's value, or [`BANK_INITIAL`] when absent.
fn balance(value: Option<&Vec<u8>>) -> Result<i64, String> {
    match value {
        None => Ok(BANK_INITIAL),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("balance {:?} is not a number", String::from_utf8_lossy(v))),
    }
}

/// Every balance is a non-negative number and they add up to the total.
fn bank_total_is_kept(
    accounts: usize,
    balances: &BTreeMap<&Key, Option<&Vec<u8>>>,
) -> Result<(), String> {
    let mut sum = 0;
    for (key, value) in balances {
        let b = balance(*value).map_err(|e| format!("{key}: {e}"))?;
        if b < 0 {
            return Err(format!("{key} has a negative balance {b}"));
        }
        sum += b;
    }
    let total = BANK_INITIAL * accounts as i64;
    if sum != total {
        let shown: Vec<String> = balances
            .iter()
            .map(|(k, v)| format!("{k}={}", balance(*v).unwrap_or(i64::MIN)))
            .collect();
        return Err(format!(
            "the balances add up to {sum}, not {total}: {}",
            shown.join(" ")
        ));
    }
    Ok(())
}

/// One turn of a client at the bank: three in ten read every account (GETs
/// of all of them, or one SCAN of the table), the others transfer: read two
/// accounts, then move up to 10 from one to the other with a command that
/// CHECKs both balances it read and PUTs both new ones (it aborts if either
/// changed meanwhile; that is fine, the turn just ends).
async fn bank_turn(
    rng: &mut impl Rng,
    shared: &Shared,
    session: &mut Session<SimRuntime>,
    me: usize,
) {
    let accounts = &shared.bank;
    if rng.gen_bool(0.3) {
        let ops = if rng.gen_bool(0.5) {
            accounts
                .iter()
                .map(|key| Op::Get { key: key.clone() })
                .collect()
        } else {
            vec![Op::Scan {
                start: accounts[0].clone(),
                end: accounts[accounts.len() - 1].clone(),
            }]
        };
        let _ = run_bank_checked(shared, session, me, ops).await;
        return;
    }
    let from = accounts[rng.gen_range(0..accounts.len())].clone();
    let to = loop {
        let k = &accounts[rng.gen_range(0..accounts.len())];
        if *k != from {
            break k.clone();
        }
    };
    let read = vec![Op::Get { key: from.clone() }, Op::Get { key: to.clone() }];
    let Ok(results) = run_bank_checked(shared, session, me, read).await else {
        return;
    };
    let [OpResult::Get(a), OpResult::Get(b)] = &results[..] else {
        panic!(
            "seed {}: bank: a read of two accounts returned {results:?}",
            shared.seed
        );
    };
    let (Ok(balance_a), Ok(balance_b)) = (balance(a.as_ref()), balance(b.as_ref())) else {
        panic!(
            "seed {}: bank: client {me} read a balance that is not a number: {results:?}",
            shared.seed
        );
    };
    if balance_a <= 0 {
        return;
    }
    let amount = rng.gen_range(1..=balance_a.min(10));
    let transfer = vec![
        Op::Check {
            key: from.clone(),
            expected: a.clone(),
        },
        Op::Check {
            key: to.clone(),
            expected: b.clone(),
        },
        Op::Put {
            key: from,
            value: (balance_a - amount).to_string().into_bytes(),
        },
        Op::Put {
            key: to,
            value: (balance_b + amount).to_string().into_bytes(),
        },
    ];
    if run_bank_checked(shared, session, me, transfer)
        .await
        .is_ok()
    {
        stats::count(Event::BankTransfer);
    }
}

/// How a command goes into the history for the final linearizability
/// check: one record per partition it touches, over the same interval,
/// with that partition's operations (a SCAN clipped to it, with its rows).
/// Each part is atomic on its own; whether the parts of a transaction are
/// atomic *together* is checked by [`check_atomicity`] (the WGL search over
/// whole multi-partition records joins every key into one group and gives
/// up on runs with many unknown outcomes).
fn split_by_partition(map: &PartitionMap, ops: &[Op]) -> Vec<(Vec<usize>, Option<Partition>)> {
    let mut parts: BTreeMap<PartitionId, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        for p in map
            .partitions_of(op)
            .expect("the workload's keys are in the map")
        {
            parts.entry(p.id).or_default().push(i);
        }
    }
    if parts.len() <= 1 {
        return vec![((0..ops.len()).collect(), None)];
    }
    parts
        .into_iter()
        .map(|(id, indices)| (indices, Some(map.partitions[&id].clone())))
        .collect()
}

/// A SCAN clipped to `part`, if `op` is a SCAN and there is a part.
fn ops_copy_scan(op: &Op, part: Option<&Partition>) -> Option<HistoryOp> {
    let (Op::Scan { start, end }, Some(p)) = (op, part) else {
        return None;
    };
    Some(HistoryOp::Scan {
        start: Key::new(p.table.clone(), start.num.max(p.start)),
        end: Key::new(p.table.clone(), end.num.min(p.last())),
    })
}

/// The final contents of every table (the cluster is healthy and quiet).
async fn read_everything(shared: Arc<Shared>) -> BTreeMap<Key, Vec<u8>> {
    let seed = shared.seed;
    let client = match Client::connect(SimRuntime, shared.client_config.clone()).await {
        Ok(client) => client,
        Err(e) => panic!("seed {seed}: stability: the final reader cannot connect: {e}"),
    };
    let mut session = client.session();
    let mut contents = BTreeMap::new();
    let tables = shared.tables.iter().map(|(t, _)| t.as_str());
    for table in tables.chain([BANK_TABLE]) {
        let scan = Op::Scan {
            start: Key::new(table, 0),
            end: Key::new(table, u64::MAX),
        };
        match session.execute(vec![scan]).await {
            Ok(mut results) => {
                if let Some(OpResult::Scan(rows)) = results.pop() {
                    contents.extend(rows);
                }
            }
            Err(e) => panic!("seed {seed}: stability: the final read of table {table} failed: {e}"),
        }
    }
    contents
}

/// How long the manager's status may take to show the healed, quiet
/// cluster: servers heartbeat every second and count as unreachable after
/// 3 s of silence ([`crate::manager::status::UNREACHABLE_AFTER`]).
const CONTROL_PLANE_BOUND: Duration = Duration::from_secs(5);
/// With a server lost for good: by the end of the quiet phase its replicas
/// were usually replaced long ago, but faults may have delayed the last
/// moves (a move takes a few heartbeats: learner, promotion, removal).
const CONTROL_PLANE_BOUND_AFTER_LOSS: Duration = Duration::from_secs(30);

/// Polls the manager's status (as `admin` does) until every server is up
/// and every partition has a leader that all its replicas report; panics
/// (check `control-plane`) if that takes longer than [`CONTROL_PLANE_BOUND`].
async fn check_control_plane(shared: Arc<Shared>, keys_per_table: BTreeMap<String, u64>) {
    use crate::manager::status::ServerState;
    let seed = shared.seed;
    let lost = shared.lost.lock().unwrap().clone();
    let client = match Client::connect(SimRuntime, shared.client_config.clone()).await {
        Ok(client) => client,
        Err(e) => panic!("seed {seed}: control-plane: cannot connect: {e}"),
    };
    // With a short --dead-after, servers that faults kept down long were
    // replaced, and their replicas may still be moving back at the end.
    // Splits make new partitions on the same servers, which the manager
    // then spreads: moves may still be under way at the end too.
    let bound = if lost.is_empty()
        && !shared.short_dead_after
        && !shared.splits
        && shared.joined.is_none()
        && shared.drain.is_none()
    {
        CONTROL_PLANE_BOUND
    } else {
        CONTROL_PLANE_BOUND_AFTER_LOSS
    };
    let deadline = Instant::now() + bound;
    loop {
        let problem = match client.cluster_status().await {
            Err(e) => format!("the manager did not answer: {e}"),
            Ok(status) => {
                let down: Vec<String> = status
                    .servers
                    .iter()
                    .filter(|s| s.state != ServerState::Up && !lost.contains(&s.id))
                    .map(|s| format!("server {} is {}", s.id, s.state.name()))
                    .collect();
                // Every partition back to REPLICAS voters, none on a lost
                // server, no move under way: when enough servers are left
                // to place them (a server lost after another was drained
                // may leave too few; then the lost replicas stay).
                let drained = shared
                    .drain
                    .filter(|_| shared.drained.load(Ordering::SeqCst))
                    .map(|(_, d)| d);
                let placeable = status
                    .servers
                    .iter()
                    .filter(|s| !lost.contains(&s.id) && Some(s.id) != drained)
                    .count();
                // Replicas on lost servers stay (and never report) only
                // when there was nowhere to move them.
                let expected = |p: &&crate::manager::status::PartitionInfo| {
                    p.replicas
                        .iter()
                        .filter(|r| placeable >= REPLICAS || !lost.contains(r))
                        .count()
                };
                let unled: Vec<String> = status
                    .partitions
                    .iter()
                    .filter(|p| p.leader.is_none() || p.reporting.len() != expected(p))
                    .map(|p| {
                        format!(
                            "partition {} has leader {:?}, reported by {:?} of {:?}",
                            p.id, p.leader, p.reporting, p.replicas
                        )
                    })
                    .collect();
                let short: Vec<String> = status
                    .partitions
                    .iter()
                    .filter(|_| placeable >= REPLICAS)
                    .filter(|p| {
                        p.replicas.len() != REPLICAS
                            || !p.learners.is_empty()
                            || p.replicas.iter().any(|r| lost.contains(r))
                    })
                    .map(|p| {
                        format!(
                            "partition {} has replicas {:?} and learners {:?} (lost: {lost:?})",
                            p.id, p.replicas, p.learners
                        )
                    })
                    .collect();
                // The map tiles every table (partitions in key order,
                // contiguous from 0, the last open-ended), and the leaders'
                // key counts add up to what the final read found: every key
                // in exactly one partition, through any splits.
                let mut tiling = Vec::new();
                let mut next: BTreeMap<&str, Option<u64>> = BTreeMap::new();
                let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
                for p in &status.partitions {
                    let expected = next.entry(p.table.as_str()).or_insert(Some(0));
                    if *expected != Some(p.start) {
                        tiling.push(format!(
                            "partition {} of table {} starts at {} (expected {expected:?})",
                            p.id, p.table, p.start
                        ));
                    }
                    *expected = p.end;
                    *counted.entry(p.table.as_str()).or_default() += p.keys;
                }
                for (table, end) in &next {
                    if end.is_some() {
                        tiling.push(format!("table {table} does not end open-ended ({end:?})"));
                    }
                }
                for (table, &n) in &keys_per_table {
                    let c = counted.get(table.as_str()).copied().unwrap_or(0);
                    if c != n {
                        tiling.push(format!(
                            "table {table}: the partitions' leaders hold {c} keys, the final read found {n}"
                        ));
                    }
                }
                // A joined server got a share; a drained one gave all of
                // it away (when enough other servers are left for it).
                let mut moves = Vec::new();
                let replicas_of = |id: u64| {
                    status
                        .servers
                        .iter()
                        .find(|s| s.id == id)
                        .map(|s| (s.replicas, s.leaders))
                };
                if let Some(j) = shared.joined {
                    match replicas_of(j) {
                        Some((r, _)) if r > 0 => {}
                        other => moves.push(format!(
                            "server {j} joined but holds (replicas, leaders) {other:?}"
                        )),
                    }
                }
                if let (Some((_, d)), true) = (shared.drain, shared.drained.load(Ordering::SeqCst))
                {
                    let placeable = status
                        .servers
                        .iter()
                        .filter(|s| s.id != d && !lost.contains(&s.id))
                        .count();
                    if placeable >= REPLICAS && !lost.contains(&d) {
                        match replicas_of(d) {
                            Some((0, 0)) | None => {}
                            Some(held) => moves.push(format!(
                                "server {d} was drained but holds (replicas, leaders) {held:?}"
                            )),
                        }
                    }
                }
                if down.is_empty()
                    && unled.is_empty()
                    && short.is_empty()
                    && tiling.is_empty()
                    && moves.is_empty()
                {
                    return;
                }
                [down, unled, short, tiling, moves].concat().join("; ")
            }
        };
        if Instant::now() >= deadline {
            panic!(
                "seed {seed}: control-plane: the manager's status did not show the healed \
                 cluster within {bound:?}: {problem}"
            );
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// One command as the atomicity check sees it.
struct Recorded {
    client: usize,
    invoked: Duration,
    ops: Vec<Op>,
    outcome: Result<Vec<OpResult>, ClientError>,
}

/// Atomicity of transactions across partitions (kvnemesis's idea): the
/// workload's transactions PUT a value unique to the command. At the end,
/// with the final contents of every table:
/// - a command that failed (certainly not applied) must not have left its
///   value anywhere, nor have been read by anyone;
/// - a command whose value is found at one of its keys took effect, so it
///   took effect at all of them: each of its other PUT keys holds its value
///   too, unless a later command of the same client wrote that key.
fn check_atomicity(
    seed: u64,
    commands: &[Recorded],
    final_state: &BTreeMap<Key, Vec<u8>>,
) -> Result<usize, String> {
    let mut observed: BTreeSet<Vec<u8>> = BTreeSet::new();
    for c in commands {
        if let Ok(results) = &c.outcome {
            for r in results {
                match r {
                    OpResult::Get(Some(v)) | OpResult::Swap(Some(v)) => {
                        observed.insert(v.clone());
                    }
                    OpResult::Scan(rows) => observed.extend(rows.iter().map(|(_, v)| v.clone())),
                    _ => {}
                }
            }
        }
    }
    observed.extend(final_state.values().cloned());
    let mut checked = 0;
    for (n, c) in commands.iter().enumerate() {
        // The last PUT of each key in the command, with a unique value.
        let mut puts: BTreeMap<&Key, &Vec<u8>> = BTreeMap::new();
        for op in &c.ops {
            match op {
                Op::Put { key, value } if value.starts_with(b"x") => {
                    puts.insert(key, value);
                }
                Op::Put { key, .. } | Op::Swap { key, .. } | Op::Delete { key } => {
                    puts.remove(key);
                }
                _ => {}
            }
        }
        let Some(unique) = puts.values().next().map(|v| (*v).clone()) else {
            continue;
        };
        checked += 1;
        let failed = matches!(
            c.outcome,
            Err(ClientError::Unavailable(_) | ClientError::Rejected(_))
        );
        if failed && observed.contains(&unique) {
            return Err(format!(
                "seed {seed}: atomicity: client {}'s command `{}` (invoked at {:?}) failed, \
                 yet its value {} was observed",
                c.client,
                fmt_ops(&c.ops),
                c.invoked,
                String::from_utf8_lossy(&unique)
            ));
        }
        let here: Vec<&Key> = puts
            .iter()
            .filter(|(k, _)| final_state.get(**k) == Some(&unique))
            .map(|(k, _)| *k)
            .collect();
        let Some(witness) = here.first() else {
            continue;
        };
        for key in puts.keys() {
            if final_state.get(*key) == Some(&unique) {
                continue;
            }
            let rewritten = commands[n + 1..].iter().any(|later| {
                later.client == c.client
                    && later.ops.iter().any(|op| match op {
                        Op::Put { key: k, .. }
                        | Op::Swap { key: k, .. }
                        | Op::Delete { key: k } => k == *key,
                        _ => false,
                    })
            });
            if !rewritten {
                return Err(format!(
                    "seed {seed}: atomicity: client {}'s command `{}` (invoked at {:?}, {}) \
                     took effect at {witness} but not at {key}, which no later command wrote \
                     (it holds {:?})",
                    c.client,
                    fmt_ops(&c.ops),
                    c.invoked,
                    match &c.outcome {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e.to_string(),
                    },
                    final_state
                        .get(*key)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                ));
            }
        }
    }
    Ok(checked)
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

/// A random command: mostly single operations on `me`'s keys, some reads
/// of any client's key (checked by the linearizability checker only), some
/// SCANs (possibly across partitions, read-only), some transactions across
/// two or three partitions, some multi-operation commands inside one
/// partition.
fn random_command(rng: &mut impl Rng, me: usize, shared: &Shared) -> Vec<Op> {
    let pick = rng.gen_range(0..100);
    if pick < 12 {
        let (table, n) = &shared.tables[rng.gen_range(0..shared.tables.len())];
        let (table, n) = (table.as_str(), *n);
        let start = rng.gen_range(0..n + 3);
        let end = start + rng.gen_range(0..25);
        return vec![Op::Scan {
            start: Key::new(table, start),
            end: Key::new(table, end),
        }];
    }
    let ids = shared.partition_ids();
    let partition = ids[rng.gen_range(0..ids.len())];
    if pick < 27 {
        let keys = shared.keys_in(partition);
        let key = keys[rng.gen_range(0..keys.len())].clone();
        return vec![Op::Get { key }];
    }
    let keys = shared.owned_in(me, partition);
    if pick < 63 {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        return vec![random_single_op(rng, key)];
    }
    if pick < 75 && ids.len() > 1 {
        // A transaction across two or three partitions (any tables): the
        // client's own keys there, now and then a SCAN of one of them.
        let mut chosen = vec![partition];
        let wanted = rng.gen_range(2..=3.min(ids.len()));
        while chosen.len() < wanted {
            let p = ids[rng.gen_range(0..ids.len())];
            if !chosen.contains(&p) {
                chosen.push(p);
            }
        }
        // Its writes carry a value unique to the command, so the final
        // check can tell whether an unknown-outcome one took effect.
        let unique = format!("x{}", rng.gen::<u32>()).into_bytes();
        let mut ops = Vec::new();
        for p in chosen {
            let keys = shared.owned_in(me, p);
            for _ in 0..rng.gen_range(1..=2) {
                if rng.gen_bool(0.1) {
                    let part = &shared.map.partitions[&p];
                    let start = part.start + rng.gen_range(0..4);
                    let end = start + rng.gen_range(0..6);
                    ops.push(Op::Scan {
                        start: Key::new(part.table.clone(), start),
                        end: Key::new(part.table.clone(), end),
                    });
                } else {
                    let key = keys[rng.gen_range(0..keys.len())].clone();
                    let op = match random_single_op(rng, key) {
                        Op::Put { key, .. } => Op::Put {
                            key,
                            value: unique.clone(),
                        },
                        Op::Swap { key, .. } => Op::Swap {
                            key,
                            value: unique.clone(),
                        },
                        op => op,
                    };
                    ops.push(op);
                }
            }
        }
        return ops;
    }
    // A multi-operation command, all in `partition` (atomic there).
    let p = &shared.map.partitions[&partition];
    let universe_end = shared.tables.iter().find(|(t, _)| *t == p.table).unwrap().1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn minority_kills_only_3(episodes: Vec<Episode>) -> (Vec<Episode>, u64) {
        minority_kills_only(episodes, 3)
    }

    #[test]
    fn shapes_and_swarm_subsets_vary_with_the_seed() {
        let shapes: Vec<Shape> = (0..300).map(Shape::for_seed).collect();
        for n in 3..=5 {
            assert!(shapes.iter().any(|s| s.servers == n), "{n} servers");
        }
        for t in 1..=3 {
            assert!(shapes.iter().any(|s| s.tables.len() == t), "{t} tables");
        }
        assert!(shapes
            .iter()
            .flat_map(|s| &s.tables)
            .all(|(_, n)| (20..=80).contains(n)));
        assert_eq!(Shape::for_seed(7), Shape::for_seed(7));
        for mode in [Mode::Memory, Mode::Durable] {
            let sets: Vec<Faults> = (0..300).map(|seed| Faults::swarm(seed, mode)).collect();
            for k in FaultKind::ALL {
                let on = sets.iter().filter(|f| f.contains(k)).count();
                match (k, mode) {
                    (FaultKind::Disk | FaultKind::Wipe, Mode::Memory) => assert_eq!(on, 0),
                    _ => assert!(on > 60 && on < 300, "{k:?} {mode:?}: on in {on} of 300"),
                }
            }
        }
        // Kills are on in durable mode whenever they are in memory mode.
        for seed in 0..300 {
            if Faults::swarm(seed, Mode::Memory).contains(FaultKind::Kill) {
                assert!(Faults::swarm(seed, Mode::Durable).contains(FaultKind::Kill));
            }
        }
    }

    #[test]
    fn longest_gap_finds_the_uncovered_stretch() {
        assert_eq!(longest_gap(&[], 0.0, 5.0), 5.0);
        assert_eq!(longest_gap(&[(1.0, 2.0), (1.5, 3.0)], 0.0, 10.0), 7.0);
        assert_eq!(longest_gap(&[(0.0, 4.0), (6.0, 7.0)], 1.0, 8.0), 2.0);
        assert_eq!(longest_gap(&[(0.0, 10.0)], 1.0, 8.0), 0.0);
    }

    #[test]
    fn memory_kills_leave_a_caught_up_majority() {
        let (kept, dropped) = minority_kills_only_3(vec![
            Episode::kill(4.0, 6.0, vec![0]),
            // Server 0 is down: dropped.
            Episode::kill(5.0, 7.0, vec![1]),
            // Server 0 restarted at 6 but has not caught up by 8: dropped.
            Episode::kill(8.0, 9.0, vec![2]),
            // 6 s after the restart: kept.
            Episode::kill(12.0, 13.0, vec![1]),
        ]);
        let starts: Vec<f64> = kept.iter().map(|e| e.start).collect();
        assert_eq!((starts, dropped), (vec![4.0, 12.0], 2));
        // A peer cut off at the time of the kill, or reconnected too
        // recently, blocks it; a client-link clog does not.
        let cut = |start, end| Episode {
            kind: FaultKind::Partition,
            start,
            end,
            impaired: vec![2],
            begin: vec![],
            finish: vec![],
        };
        let (kept, dropped) = minority_kills_only_3(vec![
            cut(5.0, 10.0),
            Episode::kill(7.0, 8.0, vec![0]),
            Episode::kill(11.0, 12.0, vec![0]),
            Episode::kill(20.0, 21.0, vec![0]),
        ]);
        assert_eq!(dropped, 2);
        assert_eq!(kept.iter().filter(|e| e.kind == FaultKind::Kill).count(), 1);
    }

    #[test]
    fn memory_rolling_restarts_wait_for_a_caught_up_majority() {
        let roll = |start: f64, end: f64, s: usize| {
            let mut e = Episode::kill(start, end, vec![s]);
            e.kind = FaultKind::Rolling;
            e
        };
        let cut = Episode {
            kind: FaultKind::Partition,
            start: 5.0,
            end: 10.0,
            impaired: vec![2],
            begin: vec![],
            finish: vec![],
        };
        let (kept, dropped) = minority_kills_only_3(vec![
            cut,
            roll(4.0, 4.5, 0),
            // Server 2 is cut off at 8: postponed to 3 s after the cut
            // heals (13), and the rest of the roll with it.
            roll(8.0, 8.5, 1),
            roll(12.0, 12.5, 2),
            // An ordinary kill that would break the postponed roll: dropped.
            Episode::kill(14.0, 15.0, vec![0]),
        ]);
        let starts: Vec<(FaultKind, f64)> = kept
            .iter()
            .filter(|e| is_kill(e))
            .map(|e| (e.kind, e.start))
            .collect();
        assert_eq!(
            (starts, dropped),
            (
                vec![
                    (FaultKind::Rolling, 4.0),
                    (FaultKind::Rolling, 13.0),
                    (FaultKind::Rolling, 17.0)
                ],
                1
            )
        );
    }
}
