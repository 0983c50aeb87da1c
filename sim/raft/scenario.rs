//! The scenario: one Raft group on a pool of [`POOL`] simulated nodes, a
//! client node, a nemesis, a membership operator, and the checkers.
//!
//! ```text
//!   nodes   10.0.1.1..=5:7000   initial voters 1..=n, n = 3 or 5 (by seed); the others
//!                               start as non-members; SimRuntime + harness SimDisk each
//!   client  10.0.2.1            2 client tasks, the operator, the log-matching spot checker
//! ```
//!
//! Every choice below is drawn from the simulation's seeded rng:
//! 1. **Setup**: packet loss 0–10 %, latency 1–(1..30) ms, injected message
//!    duplication 0–5 %, fsync delay 0–2 ms (in 30 % of seeds 2–20 ms),
//!    group-commit batching, WAL segment size (2–64 KiB, so logs roll over),
//!    and Raft tuning (election 10–20 ticks of 10 ms,
//!    heartbeat 1–3 ticks, append batch and pipelining window, pre-vote and
//!    check-quorum each on in 3 seeds of 4). The snapshot settings are
//!    drawn from a hash of the seed instead ([`seed_draw`]), so they do not
//!    shift the draws above (and the schedules the regression seeds pin):
//!    the compaction interval K (snapshot + log compaction every K applied
//!    entries, log-uniform in 2..=200, [`compact_every`]), the snapshot
//!    chunk size (1–64 bytes, so the ~30-byte register snapshot travels in
//!    one to thirty chunks) and the chunk window (1, 2 or 4).
//! 2. **Chaos** (8–14 s): two clients propose unique values (`c<k>-<i>`) to
//!    whichever node looks like the leader and issue ReadIndex reads, each
//!    with a 1 s deadline (a timeout is an unknown outcome). Meanwhile the
//!    nemesis, every 0.1–1 s, kills a node (often the leader; its disk
//!    crashes: unsynced bytes are dropped, kept in part or torn) and restarts
//!    it later (30 % of restarts within 60 ms, to race in-flight votes),
//!    clogs a node, clogs single links (one direction, sometimes both),
//!    isolates the leader, pauses a node (each undone after 0.1–3 s), or
//!    asks the leader to transfer leadership to another node. Faults hit
//!    every node of the pool (voters, learners, removed nodes and
//!    non-members alike). And when a
//!    node installs a snapshot from its leader, the nemesis crashes it at
//!    once with a per-seed probability (10, 30 or 60 %; the snapshot record
//!    may not be durable yet) and restarts it soon (half of the time within
//!    60 ms). Meanwhile the **operator** ([`operator`], its choices drawn
//!    from a hash of the seed, not from the simulation's rng) changes the
//!    membership every 0.1–0.7 s through whichever node looks like the
//!    leader, the way distkv's manager re-replicates: a non-member is added
//!    as a learner, promoted once caught up, and a voter removed (never the
//!    leader; never below 3 voters); also plain additions, removals (two of
//!    five voters back to back), and learners added, promoted or removed.
//!    Removed nodes keep running with their state; a removed node may be
//!    added again later, with whatever its log still holds.
//! 3. **Heal**: every link unclogged, paused nodes resumed, dead nodes
//!    restarted, loss set to 0 (latency and duplication stay).
//! 4. **Liveness** (bound [`LIVENESS_BOUND`]): a leader exists, a new
//!    proposal is acknowledged, a ReadIndex read sees it, and every member
//!    of the final membership (voters and learners) reaches the leader's
//!    applied index.
//! 5. **Final checks**: every acknowledged value is applied at its index on
//!    every member of the final membership; log matching over all final
//!    logs (of every node: removed nodes' logs obey Log Matching too).
//!
//! The checkers themselves are in [`crate::checker`].

use crate::checker::{Check, Counts, Fnv, LogImage};
use crate::node::{node_ip, run_node, NodeParams};
use crate::shared::{Request, Shared};
use distkv::bugs::Bug;
use distkv::hash::splitmix64;
use distkv::raft::{ConfChange, Index, Membership, NodeId};
use distkv::rt::SimDisk;
use distkv::stats::Event;
use distkv::storage::group_commit::GroupCommitConfig;
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::Handle;
use madsim::time::{sleep, sleep_until, timeout};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// After healing, the liveness phase must finish within this.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);
/// A client's deadline for one request.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
const CLIENTS: usize = 2;
/// How often the log-matching spot check runs.
const LOG_CHECK_EVERY: Duration = Duration::from_millis(200);
/// Nodes in every seed: the initial voters (3 or 5) and the rest, which
/// start as non-members and may be added by the operator.
pub const POOL: u64 = 5;
/// The operator never takes the group below this many voters.
const MIN_VOTERS: usize = 3;
/// The operator promotes a learner once its match index is at most this
/// far behind the leader's commit index.
const PROMOTE_LAG: Index = 8;
/// A plan step that could not be proposed this many times is abandoned.
const PLAN_PATIENCE: u32 = 12;

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// What one run did; equal for two runs of the same seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub seed: u64,
    /// Initial voters (of [`POOL`] nodes).
    pub nodes: u64,
    pub loss_permille: u64,
    pub max_latency_ms: u64,
    pub dup_ppm: u64,
    pub kills: u64,
    pub install_kills: u64,
    pub clogs: u64,
    pub pauses: u64,
    pub transfers: u64,
    /// Membership changes the operator proposed and a leader accepted
    /// (appended), and the voters of the final membership.
    pub conf_changes: u64,
    pub final_voters: Vec<NodeId>,
    pub counts: Counts,
    pub compact_every: u64,
    /// Compactions, snapshots sent and installed, elections (`distkv::stats`).
    pub events: distkv::stats::Counts,
    pub final_index: Index,
    pub end: Duration,
    pub trace_hash: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "seed {}: {} nodes, loss {:.1}%, latency 1..{} ms, dup {:.1}%: {} kills ({} right after an install), {} clogs, \
             {} pauses, {} transfers, {} membership changes (final voters {:?}); {} proposals ({} acked), {} reads ({} ok), {} leaders, final index {}; \
             compact every {}: {} compactions, {} snapshots sent, {} installed; ended at {:.1?}, \
             trace {:016x}",
            self.seed,
            self.nodes,
            self.loss_permille as f64 / 10.0,
            self.max_latency_ms,
            self.dup_ppm as f64 / 10_000.0,
            self.kills,
            self.install_kills,
            self.clogs,
            self.pauses,
            self.transfers,
            self.conf_changes,
            self.final_voters,
            c.proposals,
            c.acked,
            c.reads,
            c.reads_ok,
            c.leaders,
            self.final_index,
            self.compact_every,
            self.events.get(Event::Compaction),
            self.events.get(Event::SnapshotSent),
            self.events.get(Event::SnapshotInstalled),
            self.end,
            self.trace_hash
        )
    }
}

/// The one-line command that reruns `seed` (with `bug` injected, if any).
pub fn reproduce(seed: u64, bug: Option<Bug>) -> String {
    let env = bug.map_or(String::new(), |b| format!("SIM_RAFT_BUG={} ", b.name()));
    format!(
        "{env}MADSIM_TEST_SEED={seed} cargo test --release --features sim --test sim_raft \
         raft_chaos -- --exact --nocapture"
    )
}

/// Compact every K applied entries: K log-uniform in `2..=200` (so a
/// handful in some seeds, a couple of hundred in others), taken from a hash
/// of the seed rather than from the simulation's rng, so that adding this
/// draw did not shift the others.
pub fn compact_every(seed: u64) -> u64 {
    (2.0 * 100f64.powf(seed_draw(seed, "compact_every"))).round() as u64
}

/// A number uniform in `[0, 1)` from a hash of `seed` and `what` (the same
/// for a seed however the simulation's rng is used).
pub fn seed_draw(seed: u64, what: &str) -> f64 {
    let mut label = Fnv::default();
    label.write(what.as_bytes());
    let h = splitmix64(seed ^ splitmix64(label.0));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Picks one of `choices` by [`seed_draw`].
fn seed_pick<T: Copy>(seed: u64, what: &str, choices: &[T]) -> T {
    choices[(seed_draw(seed, what) * choices.len() as f64) as usize]
}

/// Faults in effect, to undo them and to heal everything at the end.
enum Undo {
    Restart(NodeId),
    UnclogNode(NodeId),
    UnclogLink(NodeId, NodeId),
    Resume(NodeId),
}

struct World {
    handle: Handle,
    net: Arc<NetSim>,
    shared: Arc<Shared>,
    n: u64,
    nodes: BTreeMap<NodeId, madsim::task::NodeId>,
    disks: BTreeMap<NodeId, SimDisk>,
    down: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
    /// Nodes stopped for good after the heal ([`World::retire_removed`]).
    retired: BTreeSet<NodeId>,
    /// Clog reference counts (faults overlap).
    clogged_nodes: BTreeMap<NodeId, u32>,
    clogged_links: BTreeMap<(NodeId, NodeId), u32>,
    kills: u64,
    /// Of `kills`: crashes right after a snapshot install.
    install_kills: u64,
    clogs: u64,
    pauses: u64,
    transfers: u64,
}

impl World {
    fn kill(&mut self, id: NodeId, rng: &mut impl Rng) {
        self.handle.kill(self.nodes[&id]);
        // A power cut: unsynced WAL bytes are lost, kept in part, or torn.
        let report = self.disks[&id].crash(|n| rng.gen_range(0..n));
        {
            let mut views = self.shared.views.lock().unwrap();
            let v = views.get_mut(&id).unwrap();
            v.up = false;
            v.role = None;
            v.mailbox = None;
        }
        self.down.insert(id);
        self.kills += 1;
        self.shared.trace(&format!(
            "kill {id}: unsynced {} kept {} torn {}",
            report.unsynced_bytes, report.kept_bytes, report.torn_files
        ));
    }

    fn restart(&mut self, id: NodeId) {
        // Always after a kill: restart alone cannot re-bind the address.
        if self.down.remove(&id) {
            self.handle.restart(self.nodes[&id]);
            self.shared.trace(&format!("restart {id}"));
        }
    }

    fn clog_node(&mut self, id: NodeId) {
        *self.clogged_nodes.entry(id).or_default() += 1;
        self.net.clog_node(self.nodes[&id]);
        self.clogs += 1;
        self.shared.trace(&format!("clog {id}"));
    }

    fn unclog_node(&mut self, id: NodeId) {
        let c = self.clogged_nodes.entry(id).or_default();
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.clogged_nodes.remove(&id);
            self.net.unclog_node(self.nodes[&id]);
            self.shared.trace(&format!("unclog {id}"));
        }
    }

    fn clog_link(&mut self, a: NodeId, b: NodeId) {
        *self.clogged_links.entry((a, b)).or_default() += 1;
        self.net.clog_link(self.nodes[&a], self.nodes[&b]);
        self.clogs += 1;
        self.shared.trace(&format!("clog {a}->{b}"));
    }

    fn unclog_link(&mut self, a: NodeId, b: NodeId) {
        let c = self.clogged_links.entry((a, b)).or_default();
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.clogged_links.remove(&(a, b));
            self.net.unclog_link(self.nodes[&a], self.nodes[&b]);
            self.shared.trace(&format!("unclog {a}->{b}"));
        }
    }

    fn pause(&mut self, id: NodeId) {
        self.handle.pause(self.nodes[&id]);
        self.paused.insert(id);
        self.pauses += 1;
        self.shared.trace(&format!("pause {id}"));
    }

    fn resume(&mut self, id: NodeId) {
        if self.paused.remove(&id) {
            self.handle.resume(self.nodes[&id]);
            self.shared.trace(&format!("resume {id}"));
        }
    }

    fn undo(&mut self, u: Undo) {
        match u {
            Undo::Restart(id) => self.restart(id),
            Undo::UnclogNode(id) => self.unclog_node(id),
            Undo::UnclogLink(a, b) => self.unclog_link(a, b),
            Undo::Resume(id) => self.resume(id),
        }
    }

    /// Nodes that are running and not paused.
    fn live(&self) -> Vec<NodeId> {
        (1..=self.n)
            .filter(|id| !self.down.contains(id) && !self.paused.contains(id))
            .collect()
    }

    /// A node just installed a snapshot from its leader: with probability
    /// `p`, crash it at once (its snapshot record may not be durable yet)
    /// and restart it soon (half of the time within 60 ms).
    fn crash_after_install(&mut self, rng: &mut impl Rng, p: f64) -> Vec<(Duration, Undo)> {
        let installed = std::mem::take(&mut *self.shared.installs.lock().unwrap());
        let live = self.live();
        let Some(&id) = installed.iter().rev().find(|id| live.contains(id)) else {
            return Vec::new();
        };
        if !rng.gen_bool(p) {
            return Vec::new();
        }
        self.shared
            .trace(&format!("crash {id} right after its snapshot install"));
        self.kill(id, rng);
        self.install_kills += 1;
        let down = if rng.gen_bool(0.5) {
            ms(rng.gen_range(0..60))
        } else {
            ms(rng.gen_range(60..1000))
        };
        vec![(down, Undo::Restart(id))]
    }

    /// Injects one random fault; returns how to undo it and when.
    fn fault(&mut self, rng: &mut impl Rng) -> Vec<(Duration, Undo)> {
        let live = self.live();
        let leader = self.shared.leader().filter(|l| live.contains(l));
        let n = self.n;
        let hold = ms(rng.gen_range(100..3000));
        match rng.gen_range(0..100) {
            // Kill (half of the time the leader); restart later.
            0..=34 if !live.is_empty() => {
                let id = match leader {
                    Some(l) if rng.gen_bool(0.5) => l,
                    _ => live[rng.gen_range(0..live.len())],
                };
                let down = if rng.gen_bool(0.3) {
                    ms(rng.gen_range(0..60))
                } else {
                    hold
                };
                self.kill(id, rng);
                vec![(down, Undo::Restart(id))]
            }
            35..=49 => {
                let id = rng.gen_range(1..=n);
                self.clog_node(id);
                vec![(hold, Undo::UnclogNode(id))]
            }
            50..=69 => {
                let a = rng.gen_range(1..=n);
                let b = (a + rng.gen_range(0..n - 1)) % n + 1;
                self.clog_link(a, b);
                let mut undo = vec![(hold, Undo::UnclogLink(a, b))];
                if rng.gen_bool(0.3) {
                    self.clog_link(b, a);
                    undo.push((hold, Undo::UnclogLink(b, a)));
                }
                undo
            }
            70..=87 => match leader {
                Some(id) => {
                    self.clog_node(id);
                    vec![(hold, Undo::UnclogNode(id))]
                }
                None => Vec::new(),
            },
            88..=93 if !live.is_empty() => {
                let id = live[rng.gen_range(0..live.len())];
                self.pause(id);
                vec![(hold.min(ms(2000)), Undo::Resume(id))]
            }
            94..=99 => {
                // Leadership transfer to a random other member.
                if let Some(l) = leader {
                    let to = (l + rng.gen_range(0..n - 1)) % n + 1;
                    if let Some(mailbox) = self.shared.mailbox(l) {
                        let _ = mailbox.send(Request::Transfer { to });
                        self.transfers += 1;
                        self.shared.trace(&format!("transfer {l}->{to}"));
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// After the heal, in seeds without check-quorum: stops every node
    /// outside the leader's membership once that membership is committed,
    /// the way distkv's manager drops removed replicas. Without the
    /// check-quorum lease nothing stops a removed node that never learned
    /// of its removal from campaigning in its old membership with ever
    /// higher terms (pre-vote alone does not, when other stale removed
    /// nodes grant it): it cannot win, but each Vote makes the members
    /// step up a term and the leader step down (the disruption of the
    /// dissertation's §4.2.3), and the group does not converge (seed 1964
    /// of the 3,300 first: no pre-vote, no check-quorum, a removed node 3
    /// forced ~160 elections in 20 s while a learner waited for a snapshot
    /// that no leader lived long enough to send). With check-quorum,
    /// removed nodes run to the end.
    fn retire_removed(&mut self) {
        let Some(leader) = self.shared.leader() else {
            return;
        };
        let outside: Vec<NodeId> = {
            let views = self.shared.views.lock().unwrap();
            let v = &views[&leader];
            if !v.membership_committed {
                return;
            }
            (1..=self.n)
                .filter(|id| !v.membership.contains(*id) && !self.retired.contains(id))
                .collect()
        };
        for id in outside {
            self.handle.kill(self.nodes[&id]);
            {
                let mut views = self.shared.views.lock().unwrap();
                let v = views.get_mut(&id).unwrap();
                v.up = false;
                v.role = None;
                v.mailbox = None;
            }
            self.retired.insert(id);
            self.shared.trace(&format!("retire {id}: not a member"));
        }
    }

    /// Undoes every fault: the final heal.
    fn heal(&mut self) {
        for id in std::mem::take(&mut self.clogged_nodes).into_keys() {
            self.net.unclog_node(self.nodes[&id]);
        }
        for (a, b) in std::mem::take(&mut self.clogged_links).into_keys() {
            self.net.unclog_link(self.nodes[&a], self.nodes[&b]);
        }
        for id in std::mem::take(&mut self.paused) {
            self.handle.resume(self.nodes[&id]);
        }
        for id in self.down.clone() {
            self.restart(id);
        }
        self.net.update_config(|c| c.packet_loss_rate = 0.0);
        self.shared.trace("heal");
    }
}

/// Runs the whole scenario on the current simulation and returns its
/// summary. Panics (with the seed, the failed check and a reproduce command)
/// on any violation. `bug` is only used in the reproduce command: the caller
/// enables it on the simulation's thread.
pub async fn scenario(bug: Option<Bug>) -> Summary {
    let handle = Handle::current();
    let seed = handle.seed();
    distkv::stats::reset();
    let reproduce = reproduce(seed, bug);
    println!("seed {seed}: reproduce with `{reproduce}`");
    let mut rng = madsim::rand::thread_rng();
    let n: u64 = if rng.gen_bool(0.5) { 3 } else { 5 };
    let loss_permille: u64 = rng.gen_range(0..=100);
    let max_latency_ms: u64 = rng.gen_range(1..=30);
    let dup_ppm: u64 = rng.gen_range(0..=50_000);
    let net = NetSim::current();
    net.update_config(|c| {
        c.packet_loss_rate = loss_permille as f64 / 1000.0;
        c.send_latency = ms(1)..ms(max_latency_ms + 1);
    });
    // Mostly a fast disk (0–2 ms per fsync), sometimes a slow one (2–20 ms):
    // the slower the fsync, the more kills land inside one.
    let sync_delay = Duration::from_micros(if rng.gen_bool(0.7) {
        rng.gen_range(0..=2000)
    } else {
        rng.gen_range(2000..=20_000)
    });
    let pool = POOL;
    let base = NodeParams {
        id: 0,
        voters: n,
        pool,
        election_ticks: rng.gen_range(10..=20),
        heartbeat_ticks: rng.gen_range(1..=3),
        max_entries_per_append: *[1, 4, 64, 256].get(rng.gen_range(0..4)).unwrap(),
        max_inflight_appends: *[1, 2, 8, 64].get(rng.gen_range(0..4)).unwrap(),
        pre_vote: rng.gen_bool(0.75),
        check_quorum: rng.gen_bool(0.75),
        group_commit: GroupCommitConfig {
            batch_size: rng.gen_range(1..=16),
            batch_timeout: Duration::from_micros(rng.gen_range(0..=2000)),
        },
        segment_bytes: rng.gen_range(2..=64) * 1024,
        dup_ppm,
        compact_every: compact_every(seed),
        snapshot_chunk_bytes: seed_pick(seed, "chunk_bytes", &[1, 2, 4, 8, 16, 64]),
        max_inflight_snapshot_chunks: seed_pick(seed, "chunk_window", &[1, 2, 4]),
    };
    let chaos = ms(rng.gen_range(8000..=14000));
    let crash_after_install = seed_pick(seed, "crash_after_install", &[0.1, 0.3, 0.6]);
    let shared = Arc::new(Shared::new(seed, reproduce, pool));
    shared.trace(&format!("{base:?} loss {loss_permille} latency {max_latency_ms} sync {sync_delay:?} chaos {chaos:?}"));

    let mut nodes = BTreeMap::new();
    let mut disks = BTreeMap::new();
    for id in 1..=pool {
        let disk = SimDisk::new();
        // Syncs take time, so kills land in the middle of some.
        disk.set_sync_delay(sync_delay);
        let params = NodeParams { id, ..base.clone() };
        let (s, d) = (shared.clone(), disk.clone());
        let node = handle
            .create_node()
            .name(format!("raft{id}"))
            .ip(node_ip(id))
            // `init` runs again on every restart, with empty memory and
            // whatever the disk kept.
            .init(move || run_node(params.clone(), s.clone(), d.clone()))
            .build();
        nodes.insert(id, node.id());
        disks.insert(id, disk);
    }
    let client_node = handle
        .create_node()
        .name("client")
        .ip(IpAddr::from([10, 0, 2, 1]))
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| client_node.spawn(client(me, pool, shared.clone(), stop.clone())))
        .collect();
    client_node.spawn(log_checker(shared.clone()));
    let operator = client_node.spawn(operator(shared.clone(), pool, stop.clone()));

    let mut world = World {
        handle: handle.clone(),
        net: net.clone(),
        shared: shared.clone(),
        n: pool,
        nodes,
        disks,
        down: BTreeSet::new(),
        paused: BTreeSet::new(),
        retired: BTreeSet::new(),
        clogged_nodes: BTreeMap::new(),
        clogged_links: BTreeMap::new(),
        kills: 0,
        install_kills: 0,
        clogs: 0,
        pauses: 0,
        transfers: 0,
    };

    // The nemesis: faults at random intervals, each undone after a while.
    let mut undo: BTreeMap<(Duration, u64), Undo> = BTreeMap::new();
    let mut undo_seq = 0;
    let mut next_fault = ms(rng.gen_range(300..1500));
    loop {
        let next_undo = undo.first_key_value().map(|(k, _)| k.0);
        let at = next_undo.map_or(next_fault, |u| u.min(next_fault));
        if at >= chaos {
            break;
        }
        tokio::select! {
            biased;
            _ = sleep_until(shared.start + at) => {}
            _ = shared.installed.notified() => {
                let now = shared.elapsed();
                for (after, u) in world.crash_after_install(&mut rng, crash_after_install) {
                    undo_seq += 1;
                    undo.insert((now + after, undo_seq), u);
                }
                continue;
            }
        }
        if next_undo == Some(at) {
            let (_, u) = undo.pop_first().unwrap();
            world.undo(u);
        } else {
            for (after, u) in world.fault(&mut rng) {
                undo_seq += 1;
                undo.insert((at + after, undo_seq), u);
            }
            next_fault = at + ms(rng.gen_range(100..1000));
        }
    }
    sleep_until(shared.start + chaos).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }
    let conf_changes = operator.await.expect("operator task");

    world.heal();
    let healed_at = shared.elapsed();
    let deadline = healed_at + LIVENESS_BOUND;
    let retire = (!base.check_quorum).then_some(&mut world);
    let (final_index, members) = liveness(&shared, deadline, retire).await;

    // (4) Every acknowledged value is applied at its index on every member
    // of the final membership (nodes removed, or never added, may lack it).
    {
        let checker = shared.checker.lock().unwrap();
        let views = shared.views.lock().unwrap();
        for ack in checker.acks() {
            for (id, v) in views.iter().filter(|(id, _)| members.contains(**id)) {
                // At or below the node's snapshot, the entry is in its state
                // machine (the checker compared that snapshot with every
                // other node's state at its index).
                if ack.index > v.snapshot_index && v.applied.get(&ack.index) != Some(&ack.value) {
                    shared.fail_with(
                        Check::AckedLost,
                        format!(
                            "value {:?} was acknowledged at index {}, but node {id} applied {:?} \
                             there (its applied index: {}, snapshot: {})",
                            String::from_utf8_lossy(&ack.value),
                            ack.index,
                            v.applied
                                .get(&ack.index)
                                .map(|x| String::from_utf8_lossy(x)),
                            v.applied_index,
                            v.snapshot_index
                        ),
                    );
                }
            }
        }
    }
    check_logs(&shared);

    let checker = shared.checker.lock().unwrap();
    let summary = Summary {
        seed,
        nodes: n,
        loss_permille,
        max_latency_ms,
        dup_ppm,
        kills: world.kills,
        install_kills: world.install_kills,
        clogs: world.clogs,
        pauses: world.pauses,
        transfers: world.transfers,
        conf_changes,
        final_voters: members.voters.iter().copied().collect(),
        counts: checker.counts.clone(),
        compact_every: base.compact_every,
        events: distkv::stats::snapshot(),
        final_index,
        end: shared.elapsed(),
        trace_hash: checker.trace_hash(),
    };
    println!("{summary}");
    summary
}

/// After the heal: a leader, a committed proposal, a read that sees it, and
/// every member of the leader's membership (voters and learners; every
/// change before the final proposal is committed) at the same applied index
/// as the leader, before `deadline`. Returns that index and the membership.
/// `world`: retire removed nodes ([`World::retire_removed`]) as it goes.
async fn liveness(
    shared: &Shared,
    deadline: Duration,
    mut world: Option<&mut World>,
) -> (Index, Membership) {
    let late = |what: &str| -> ! {
        shared.fail_with(
            Check::Liveness,
            format!(
                "{what} within {LIVENESS_BOUND:?} after the heal (leader: {:?}; views: {})",
                shared.leader(),
                describe_views(shared)
            ),
        )
    };
    let mut attempt = 0;
    let final_index = loop {
        if shared.elapsed() > deadline {
            late("no proposal committed");
        }
        if let Some(leader) = shared.leader() {
            attempt += 1;
            let value = format!("final-{attempt}").into_bytes();
            if let Some(index) = propose(shared, leader, value).await {
                break index;
            }
        }
        if let Some(w) = world.as_deref_mut() {
            w.retire_removed();
        }
        sleep(ms(20)).await;
    };
    loop {
        if shared.elapsed() > deadline {
            late("no ReadIndex read succeeded");
        }
        if let Some(leader) = shared.leader() {
            if let Some(r) = read(shared, leader).await {
                if r.read_index >= final_index {
                    break;
                }
            }
        }
        if let Some(w) = world.as_deref_mut() {
            w.retire_removed();
        }
        sleep(ms(20)).await;
    }
    loop {
        if shared.elapsed() > deadline {
            late("the nodes did not converge to one applied index");
        }
        let converged = shared.leader().and_then(|leader| {
            let views = shared.views.lock().unwrap();
            let (index, members) = (
                views[&leader].applied_index,
                views[&leader].membership.clone(),
            );
            (index >= final_index
                && members
                    .members()
                    .all(|id| views[&id].up && views[&id].applied_index == index))
            .then_some((index, members))
        });
        if let Some((index, members)) = converged {
            shared.trace(&format!(
                "converged at {index}: voters {:?} learners {:?}",
                members.voters, members.learners
            ));
            return (index, members);
        }
        if let Some(w) = world.as_deref_mut() {
            w.retire_removed();
        }
        sleep(ms(10)).await;
    }
}

fn describe_views(shared: &Shared) -> String {
    let views = shared.views.lock().unwrap();
    views
        .iter()
        .map(|(id, v)| {
            format!(
                "{id}: up {} {:?} term {} voters {:?} learners {:?} applied {} snapshot {} log {} commit {}{}",
                v.up,
                v.role,
                v.term,
                v.membership.voters,
                v.membership.learners,
                v.applied_index,
                v.log.snapshot_index,
                v.log.last_index(),
                v.log.commit,
                if v.matches.is_empty() {
                    String::new()
                } else {
                    format!(" matches {:?}", v.matches)
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// (3) The log-matching spot check over the newest published logs.
fn check_logs(shared: &Shared) {
    let images: Vec<(NodeId, LogImage)> = {
        let views = shared.views.lock().unwrap();
        views.iter().map(|(id, v)| (*id, v.log.clone())).collect()
    };
    let refs: Vec<(NodeId, &LogImage)> = images.iter().map(|(id, l)| (*id, l)).collect();
    let result = shared.checker.lock().unwrap().log_matching(&refs);
    shared.check(result);
}

async fn log_checker(shared: Arc<Shared>) {
    loop {
        sleep(LOG_CHECK_EVERY).await;
        check_logs(&shared);
    }
}

/// Proposes `value` at `node`; the index it was applied at, if acknowledged.
async fn propose(shared: &Shared, node: NodeId, value: Vec<u8>) -> Option<Index> {
    let mailbox = shared.mailbox(node)?;
    shared.checker.lock().unwrap().proposed();
    let (tx, rx) = oneshot::channel();
    let request = Request::Propose {
        value: value.clone(),
        reply: tx,
    };
    let outcome: Result<Index, String> = if mailbox.send(request).is_err() {
        Err("node died".into())
    } else {
        match timeout(OP_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("node died".into()),
            Err(_) => Err("timeout".into()),
        }
    };
    let v = String::from_utf8_lossy(&value).into_owned();
    match outcome {
        Ok(index) => {
            let result = shared.checker.lock().unwrap().acked(&value, index);
            shared.check(result);
            shared.trace(&format!("ack {v} at {index} by {node}"));
            Some(index)
        }
        Err(why) => {
            shared.checker.lock().unwrap().propose_failed();
            shared.trace(&format!("unknown {v} at {node}: {why}"));
            None
        }
    }
}

/// A ReadIndex read at `node`, checked; the result if it returned.
async fn read(shared: &Shared, node: NodeId) -> Option<crate::checker::ReadResult> {
    let mailbox = shared.mailbox(node)?;
    let token = shared.checker.lock().unwrap().read_invoked();
    let (tx, rx) = oneshot::channel();
    mailbox.send(Request::Read { reply: tx }).ok()?;
    match timeout(OP_TIMEOUT, rx).await {
        Ok(Ok(Ok(result))) => {
            let checked = shared
                .checker
                .lock()
                .unwrap()
                .read_returned(node, &token, &result);
            shared.check(checked);
            shared.trace(&format!("read {result:?} at {node}"));
            Some(result)
        }
        _ => {
            shared.trace(&format!("read failed at {node}"));
            None
        }
    }
}

/// A client: proposals (70 %) and reads (30 %) to whoever looks like the
/// leader, until stopped.
async fn client(me: usize, n: u64, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut rng = madsim::rand::thread_rng();
    let mut k = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let node = shared.leader().unwrap_or_else(|| rng.gen_range(1..=n));
        if rng.gen_bool(0.7) {
            k += 1;
            let value = format!("c{me}-{k}").into_bytes();
            propose(&shared, node, value).await;
        } else {
            read(&shared, node).await;
        }
        sleep(ms(rng.gen_range(1..20))).await;
    }
}

/// The operator's own random numbers (SplitMix64 from a hash of the seed),
/// so that its choices take no draws from the simulation's rng.
struct OpRng(u64);

impl OpRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(distkv::hash::GAMMA);
        splitmix64(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Whether `change` is already in effect in `m`.
fn in_effect(change: &ConfChange, m: &Membership) -> bool {
    match *change {
        ConfChange::AddLearner(id) => m.contains(id),
        ConfChange::AddVoter(id) => m.voters.contains(&id),
        ConfChange::Remove(id) => !m.contains(id),
    }
}

/// A new plan of membership changes for the group whose leader is `leader`
/// with membership `m`, mirroring distkv's manager: a new member is added
/// as a learner and promoted once caught up. One of:
/// - **move**: add learner X, promote X, remove voter Y (re-replication);
/// - **grow**: add learner X, promote X;
/// - **shrink**: remove a voter (two, back to back, from five voters);
/// - **learner**: promote or remove an existing learner, or add one and
///   leave it a learner.
///
/// X is any node of the pool that is not a member (never added, or removed
/// earlier: it rejoins with whatever its log still holds). Y is never the
/// leader, and the group never goes below [`MIN_VOTERS`] voters (so a
/// majority survives one more fault).
fn new_plan(rng: &mut OpRng, m: &Membership, leader: NodeId, pool: u64) -> Vec<ConfChange> {
    use ConfChange::*;
    let outsiders: Vec<NodeId> = (1..=pool).filter(|&id| !m.contains(id)).collect();
    let removable: Vec<NodeId> = m.voters.iter().copied().filter(|&v| v != leader).collect();
    let learners: Vec<NodeId> = m.learners.iter().copied().collect();
    let spare = m.voters.len().saturating_sub(MIN_VOTERS);
    let first = rng.below(100);
    let kind = match first {
        0..=34 => 0,
        35..=54 => 1,
        55..=74 => 2,
        _ => 3,
    };
    // The drawn kind, or the next one that is possible.
    for k in (kind..4).chain(0..kind) {
        match k {
            0 if !outsiders.is_empty() && !removable.is_empty() => {
                let (x, y) = (rng.pick(&outsiders), rng.pick(&removable));
                return vec![AddLearner(x), AddVoter(x), Remove(y)];
            }
            1 if !outsiders.is_empty() => {
                let x = rng.pick(&outsiders);
                return vec![AddLearner(x), AddVoter(x)];
            }
            2 if spare > 0 && !removable.is_empty() => {
                let y = rng.pick(&removable);
                let others: Vec<NodeId> = removable.iter().copied().filter(|&v| v != y).collect();
                if spare >= 2 && !others.is_empty() && rng.below(2) == 0 {
                    return vec![Remove(y), Remove(rng.pick(&others))];
                }
                return vec![Remove(y)];
            }
            3 if !learners.is_empty() => {
                let l = rng.pick(&learners);
                return vec![if rng.below(2) == 0 {
                    AddVoter(l)
                } else {
                    Remove(l)
                }];
            }
            3 if !outsiders.is_empty() => return vec![AddLearner(rng.pick(&outsiders))],
            _ => {}
        }
    }
    Vec::new()
}

/// The operator: every 0.1–0.7 s of the chaos phase, asks the node that
/// looks like the leader for the next membership change of its plan
/// ([`new_plan`]), once the change's precondition holds in that leader's
/// view (a learner is promoted only when its match index is within
/// [`PROMOTE_LAG`] of the commit index; a voter removal keeps
/// [`MIN_VOTERS`]; the leader is never removed). A step is done when the
/// leader's membership shows it (appended there; committed or not); refusals
/// (a change in progress, no entry of the leader's term committed yet, not
/// the leader) are retried. The pairs whose back-to-back proposal would let
/// two changes be in flight at once (promote X then remove Y; remove two
/// voters) are always sent together: a correct leader refuses the second
/// (`ChangeInProgress`) and it is proposed again later, while one with
/// the injected bug `conf-change-unsafe` accepts it. Returns how many
/// changes were accepted.
async fn operator(shared: Arc<Shared>, pool: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = OpRng(splitmix64(
        (seed_draw(shared.seed, "operator") * (1u64 << 53) as f64) as u64,
    ));
    let mut plan: VecDeque<ConfChange> = VecDeque::new();
    let mut tries = 0;
    let mut accepted = 0;
    loop {
        sleep(ms(100 + rng.below(600))).await;
        if stop.load(Ordering::SeqCst) {
            return accepted;
        }
        let Some(leader) = shared.leader() else {
            continue;
        };
        let (m, commit, matches) = {
            let views = shared.views.lock().unwrap();
            let v = &views[&leader];
            (v.membership.clone(), v.commit, v.matches.clone())
        };
        while plan.front().is_some_and(|c| in_effect(c, &m)) {
            plan.pop_front();
            tries = 0;
        }
        if tries >= PLAN_PATIENCE {
            shared.trace(&format!("operator abandons {plan:?}"));
            plan.clear();
        }
        if plan.is_empty() {
            plan = new_plan(&mut rng, &m, leader, pool).into();
            tries = 0;
            if plan.is_empty() {
                continue;
            }
            shared.trace(&format!("operator plans {plan:?}"));
        }
        tries += 1;
        let step = plan[0].clone();
        let ready = match step {
            ConfChange::AddLearner(_) => true,
            ConfChange::AddVoter(x) => {
                m.learners.contains(&x)
                    && matches.get(&x).is_some_and(|&i| i + PROMOTE_LAG >= commit)
            }
            ConfChange::Remove(y) => {
                y != leader && (!m.voters.contains(&y) || m.voters.len() > MIN_VOTERS)
            }
        };
        if !ready {
            continue;
        }
        let mut changes = vec![step.clone()];
        match (&step, plan.get(1)) {
            (ConfChange::AddVoter(_), Some(next @ ConfChange::Remove(_)))
            | (ConfChange::Remove(_), Some(next @ ConfChange::Remove(_))) => {
                changes.push(next.clone())
            }
            _ => {}
        }
        let Some(mailbox) = shared.mailbox(leader) else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let request = Request::ConfChanges {
            changes: changes.clone(),
            reply: tx,
        };
        if mailbox.send(request).is_err() {
            continue;
        }
        let results = match timeout(OP_TIMEOUT, rx).await {
            Ok(Ok(results)) => results,
            _ => continue,
        };
        accepted += results.iter().filter(|r| r.is_ok()).count() as u64;
        shared.trace(&format!("conf {changes:?} at {leader}: {results:?}"));
    }
}
