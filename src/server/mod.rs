//! The server: hosts replicas of partitions, each a member of its
//! partition's Raft group.
//!
//! ```text
//!   start --Register--> manager   (then every heartbeat interval)
//!         <--RegisterReply(map)-- : a replica for every partition placed on us
//!   client --Execute(session, seq, partition, ops)--> leader replica
//!          <--ExecuteReply(results | NotLeader{hint} | ...)--
//!   peer <--Raft(batch of (partition, message))--> peer   (one per destination)
//! ```
//! [`ServerCore`] (in [`replica`]) is the pure part: events in, an
//! [`Output`] out. [`run_server`] is the driver: it feeds the core from the
//! network and one tick timer shared by every group, logs what the core
//! asks in the shared write-ahead log (one fsync covers every group), and
//! sends votes and acknowledgements only once what they promise is durable.

pub mod manager_contact;
pub mod replica;

pub use manager_contact::{ContactNotice, ManagerContact};
pub use replica::{
    Output, Persist, RaftTuning, ReplyTo, Request, ServerCore, SnapshotDone, SnapshotJob,
};

use crate::kv::TxnOp;
use crate::manager::status::ReplicaStatus;
use crate::map::{NodeId, PartitionId};
use crate::metrics;
use crate::op::Op;
use crate::raft::{Index, Message, Term};
use crate::rt::{Disk, Net, Runtime};
use crate::storage::wal::Lsn;
use crate::storage::{Storage, StorageConfig};
use crate::wire::{decode_msg, encode_msg, Msg};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Server configuration; see the `server` binary's `--help` for the flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_id: NodeId,
    /// Where the server listens.
    pub listen_addr: SocketAddr,
    /// The dialable address it tells the manager (never `0.0.0.0`).
    pub advertise_addr: SocketAddr,
    /// The managers to register with (every one: each keeps the
    /// servers' reports, so any can take over planning), or none with
    /// `fixed_map`.
    pub managers: Vec<SocketAddr>,
    /// A map that never changes, for a cluster without a manager: the
    /// managers' own control group (`manager --peers`), whose placement is
    /// its flags.
    pub fixed_map: Option<crate::map::PartitionMap>,
    /// May join a running cluster whose manager does not list this node id
    /// (`--join`).
    pub join: bool,
    /// How often the server re-registers with the manager.
    pub heartbeat_interval: Duration,
    /// Durable storage (`--persistence`); `None` keeps everything in memory.
    pub storage: Option<StorageConfig>,
    /// The Raft tick: one timer drives every group on the server.
    pub raft_tick: Duration,
    pub raft: RaftTuning,
}

impl ServerConfig {
    pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(1000);
    /// With the default tuning: heartbeats every 100 ms, elections after
    /// 500–1000 ms without a leader.
    pub const RAFT_TICK_DEFAULT: Duration = Duration::from_millis(50);
}

/// Most log records appended but not yet durable; past it the server stops
/// reading requests until the disk catches up (backpressure, bounded memory).
const PENDING_RECORDS_MAX: u64 = 64 * 1024;

/// Messages received but not yet handled (the receiver task waits when full).
const INBOX_MAX: usize = 4096;
/// Messages already received that are handled together before the core's
/// output is carried out: client commands among them share appends, log
/// records and read rounds (`ServerCore::take_output`).
const BURST_MAX: usize = 256;

/// Raft messages to one server are sent in frames of about this size.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What waits for the log to be durable through `lsn`.
struct Pending {
    lsn: Lsn,
    partition: PartitionId,
    messages: Vec<Message>,
    last: Option<(Index, Term)>,
}

enum Event {
    Durable(Result<Lsn, String>),
    /// Stop gracefully (see [`run_server_until`]).
    Stop,
    Tick,
    SnapshotDone(SnapshotDone),
    /// A received snapshot's file is durable (or could not be written).
    SnapshotWritten(PartitionId, u64, Result<(), String>),
    Received(Option<(SocketAddr, Vec<u8>)>),
}

/// The driver's state besides the core.
struct Driver<R: Runtime, D: Disk> {
    rt: R,
    config: ServerConfig,
    net: Arc<R::Net>,
    storage: Option<Storage<D>>,
    core: ServerCore,
    pending: VecDeque<Pending>,
    /// Where each peer server is: from the map, and from the messages peers
    /// send (so a restarted server finds its group while the manager is down).
    peers: BTreeMap<NodeId, SocketAddr>,
    /// Whether the manager answers our registrations, for the log.
    manager: ManagerContact,
    /// A heartbeat is due at the next tick, before its interval: the
    /// manager should hear of a split at once (clients refused by the old
    /// partition wait for a map that shows it).
    report_due: bool,
    /// Where finished snapshot jobs come back. At most one job per replica
    /// is running (`ServerCore` asks for no other meanwhile), so this
    /// holds at most that many.
    jobs_done: tokio::sync::mpsc::UnboundedSender<SnapshotDone>,
    /// Partitions whose received snapshot (or new partition's first state)
    /// is being written to its file off the event loop: the `Persist` that
    /// carries it first, then the partition's later ones, which wait so
    /// that the log keeps the group's records in order (the snapshot's
    /// record before anything after it). Other partitions go on.
    gates: BTreeMap<PartitionId, VecDeque<Persist>>,
    /// Where the file writes report.
    written: tokio::sync::mpsc::UnboundedSender<(PartitionId, u64, Result<(), String>)>,
    /// With metrics on: when and what each unanswered request arrived as.
    requests: HashMap<ReplyTo, (Instant, &'static str)>,
    /// With metrics on: each replica's leader at the last refresh.
    leaders: BTreeMap<PartitionId, Option<NodeId>>,
}

/// Runs a server until its network endpoint or its storage fails, or the
/// manager refuses it. With `config.storage`, the server first recovers its
/// replicas from `disk` and logs every Raft state change before anything
/// that depends on it leaves the server.
pub async fn run_server<R: Runtime, D: Disk>(
    rt: R,
    disk: D,
    config: ServerConfig,
) -> io::Result<()> {
    run_server_until(rt, disk, config, std::future::pending()).await
}

/// Longest a stopping server waits for its leaderships to move.
pub const HANDOFF_MAX: Duration = Duration::from_secs(3);

/// [`run_server`] that stops gracefully once `stop` completes (SIGTERM):
/// it hands every leadership it holds to another voter (up to
/// [`HANDOFF_MAX`]; the groups keep serving meanwhile, so clients see a
/// leader change, not an election timeout), waits until its log is
/// durable through its last record, and returns `Ok`.
pub async fn run_server_until<R: Runtime, D: Disk>(
    rt: R,
    disk: D,
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let (storage, recovered) = match &config.storage {
        Some(storage_config) => {
            let (storage, recovery) = Storage::open(&rt, disk, storage_config.clone())
                .await
                .map_err(|e| io::Error::other(format!("cannot recover storage: {e}")))?;
            (Some(storage), recovery.groups)
        }
        None => (None, BTreeMap::new()),
    };
    #[cfg(feature = "sim")]
    let recovered = {
        let mut recovered = recovered;
        if crate::bugs::enabled(crate::bugs::Bug::ForgetVote) {
            // Injected bug: the term and vote are not recovered.
            for group in recovered.values_mut() {
                group.raft.hard_state.term = 0;
                group.raft.hard_state.vote = None;
            }
        }
        recovered
    };
    let net = Arc::new(
        rt.bind(Some(config.listen_addr), Some(config.advertise_addr))
            .await?,
    );
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen_addr,
        advertise = %config.advertise_addr,
        managers = ?config.managers,
        persistence = storage.is_some(),
        recovered_replicas = recovered.len(),
        "server started"
    );
    // Heartbeats: a registration with the replicas' state as of the last
    // tick (the driver refreshes `status` on every tick).
    let status: Arc<Mutex<(u64, Vec<ReplicaStatus>)>> = Arc::default();
    let report_now = Arc::new(tokio::sync::Notify::new());
    {
        let (net, rt2, status) = (net.clone(), rt.clone(), status.clone());
        let report_now = report_now.clone();
        let (managers, interval) = (config.managers.clone(), config.heartbeat_interval);
        let (node_id, addr, join) = (config.node_id, config.advertise_addr, config.join);
        rt.spawn(async move {
            if managers.is_empty() {
                return; // a fixed map: nobody to report to
            }
            loop {
                let (epoch, replicas) = status.lock().unwrap().clone();
                let register = Msg::Register {
                    node_id,
                    addr,
                    epoch,
                    join,
                    replicas,
                };
                match encode_msg(&register) {
                    Ok(bytes) => {
                        for &manager in &managers {
                            net.send(manager, bytes.clone());
                        }
                    }
                    Err(e) => tracing::error!("cannot encode a heartbeat: {e}"),
                }
                tokio::select! {
                    _ = rt2.sleep(interval) => {}
                    _ = report_now.notified() => {}
                }
            }
        });
    }
    let mut received = crate::rt::spawn_receiver(&rt, net.clone(), INBOX_MAX);
    let core = ServerCore::new(
        config.node_id,
        recovered,
        config.raft.clone(),
        rt.rand_u64(),
    );
    let manager = ManagerContact::new(rt.now(), config.heartbeat_interval);
    let (jobs_done, mut finished_jobs) = tokio::sync::mpsc::unbounded_channel();
    let (written, mut writes_done) = tokio::sync::mpsc::unbounded_channel();
    let mut d = Driver {
        jobs_done,
        gates: BTreeMap::new(),
        written,
        rt: rt.clone(),
        config,
        net,
        storage,
        core,
        pending: VecDeque::new(),
        peers: BTreeMap::new(),
        manager,
        report_due: false,
        requests: HashMap::new(),
        leaders: BTreeMap::new(),
    };
    if let Some(map) = d.config.fixed_map.clone() {
        for (&id, &addr) in &map.servers {
            d.peers.insert(id, addr);
        }
        d.core.install_map(map);
    }
    d.flush().await?;
    let tick = d.config.raft_tick;
    let mut next_tick = rt.now() + tick;
    let mut metrics_at = rt.now();
    let mut stop = std::pin::pin!(stop);
    // Set once `stop` fired: when the hand-off gives up.
    let mut stopping: Option<Instant> = None;
    loop {
        let accept = d
            .storage
            .as_ref()
            .is_none_or(|s| s.pending_records() < PENDING_RECORDS_MAX);
        let wait = next_tick.saturating_duration_since(rt.now());
        let event = {
            let storage = d.storage.as_mut();
            let durable = async move {
                match storage {
                    Some(s) => s.durable_changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                durable = durable => Event::Durable(durable),
                _ = &mut stop, if stopping.is_none() => Event::Stop,
                _ = rt.sleep(wait) => Event::Tick,
                Some(done) = finished_jobs.recv() => Event::SnapshotDone(done),
                Some((p, index, result)) = writes_done.recv() => {
                    Event::SnapshotWritten(p, index, result)
                }
                item = received.recv(), if accept => Event::Received(match item {
                    Some(Ok(x)) => Some(x),
                    Some(Err(e)) => return Err(e),
                    None => None,
                }),
            }
        };
        match event {
            Event::Durable(Ok(_)) => {}
            Event::Durable(Err(reason)) => {
                // Fail-stop: in-memory state is ahead of what is on disk.
                return Err(io::Error::other(format!(
                    "storage failed, stopping (restart to recover from disk): {reason}"
                )));
            }
            Event::Stop => {
                let leading = d.core.hand_off_leaderships();
                tracing::info!(
                    leaderships = leading,
                    "stopping: handing off leaderships, then flushing the log"
                );
                stopping = Some(rt.now() + HANDOFF_MAX);
            }
            Event::Tick => {
                let now = rt.now();
                if let Some(give_up) = stopping {
                    let leading = d.core.hand_off_leaderships();
                    if leading == 0 || now >= give_up {
                        if leading > 0 {
                            tracing::warn!(
                                leaderships = leading,
                                "stopping with leaderships not handed off"
                            );
                        }
                        d.flush().await?;
                        return d.finish().await;
                    }
                }
                next_tick = if now >= next_tick + tick {
                    now + tick // fell behind (a long pause): do not burst
                } else {
                    next_tick + tick
                };
                d.core.tick();
                *status.lock().unwrap() = (d.core.epoch(), d.core.status());
                if metrics::enabled() && now >= metrics_at {
                    metrics_at = now + metrics::REFRESH;
                    d.refresh_metrics(&status.lock().unwrap().1);
                }
                if std::mem::take(&mut d.report_due) {
                    report_now.notify_one();
                }
                if d.config.fixed_map.is_none() {
                    if let Some(notice) = d.manager.tick(now) {
                        d.log_contact(notice);
                    }
                }
            }
            Event::SnapshotDone(done) => d.core.snapshot_done(done),
            Event::SnapshotWritten(partition, index, result) => {
                d.snapshot_written(partition, index, result)?
            }
            Event::Received(None) => {
                return Err(io::Error::other("the network endpoint closed"));
            }
            Event::Received(Some((from, payload))) => {
                d.handle(from, &payload)?;
                // And whatever else has arrived meanwhile, up to a bound.
                let mut burst = 1;
                while burst < BURST_MAX {
                    match received.try_recv() {
                        Ok(Ok((from, payload))) => d.handle(from, &payload)?,
                        Ok(Err(e)) => return Err(e),
                        Err(_) => break,
                    }
                    burst += 1;
                }
                if metrics::enabled() {
                    ::metrics::histogram!("distkv_server_messages_per_burst").record(burst as f64);
                }
            }
        }
        d.flush().await?;
        if let Some(s) = d.storage.as_mut() {
            // Not while a snapshot's file is being written: the replicas'
            // state is ahead of the log for those partitions until then.
            if s.checkpoint_due() && d.gates.is_empty() {
                s.checkpoint(&d.rt, d.core.group_snapshots());
            }
        }
    }
}

impl<R: Runtime, D: Disk> Driver<R, D> {
    fn handle(&mut self, from: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let msg = match decode_msg(payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, "dropping message: {e}");
                return Ok(());
            }
        };
        match msg {
            Msg::RegisterReply { .. } if !self.config.managers.contains(&from) => {
                tracing::warn!(%from, "ignoring a registration reply that did not come from a manager");
            }
            Msg::NotManagerLeader { .. } => {} // another manager answers
            Msg::Registered { .. } if self.config.managers.contains(&from) => {
                // Our map is current.
                if let Some(notice) = self.manager.replied(self.rt.now()) {
                    self.log_contact(notice);
                }
            }
            Msg::RegisterReply { result: Ok(map) } if map.validate().is_err() => {
                tracing::error!(
                    "ignoring an invalid partition map from the manager: {:?}",
                    map.validate()
                );
            }
            Msg::RegisterReply { result: Ok(map) } => {
                if let Some(notice) = self.manager.replied(self.rt.now()) {
                    self.log_contact(notice);
                }
                for (&id, &addr) in &map.servers {
                    self.peers.insert(id, addr);
                }
                self.core.install_map(map);
            }
            Msg::RegisterReply {
                result: Err(reason),
            } => {
                return Err(io::Error::other(format!(
                    "the manager at {from} refused this server: {reason}"
                )));
            }
            Msg::Execute {
                req,
                session,
                seq,
                sent_ms,
                partition,
                ops,
            } => {
                let to = ReplyTo { addr: from, req };
                self.arrived(to, op_label(&ops));
                let request = Request {
                    session,
                    seq,
                    sent_ms,
                    ops,
                };
                let now_ms = self.rt.unix_time_ms();
                self.core.execute(to, partition, request, now_ms);
            }
            Msg::Txn { req, partition, op } => {
                let to = ReplyTo { addr: from, req };
                self.arrived(to, txn_label(&op));
                let now_ms = self.rt.unix_time_ms();
                self.core.txn(to, partition, op, now_ms);
            }
            Msg::TxnReply { req, result } => self.core.fence_reply(req, result),
            Msg::ExportRead {
                req,
                partition,
                txn,
                from: lo,
                to: hi,
                max_bytes,
                release,
            } => {
                let result = self
                    .core
                    .export_read(partition, txn, lo, hi, max_bytes, release);
                match encode_msg(&Msg::ExportReply { req, result }) {
                    Ok(bytes) => self.net.send(from, bytes),
                    Err(e) => tracing::error!("cannot encode an export page: {e}"),
                }
            }
            Msg::TransferLeader { req, partition, to } => {
                let result = self.core.transfer_leader(partition, to);
                self.admin_reply(from, req, result);
            }
            Msg::SplitPartition { req, partition, at } => {
                let to = ReplyTo { addr: from, req };
                let now_ms = self.rt.unix_time_ms();
                if let Err(why) = self.core.split(to, partition, at, now_ms) {
                    tracing::debug!(partition, "split refused: {why}");
                    self.admin_reply(from, req, Err(why));
                }
            }
            Msg::ChangeReplicas {
                req,
                partition,
                voters,
                learners,
                change,
            } => {
                let result = self
                    .core
                    .change_replicas(partition, &voters, &learners, change);
                if let Err(why) = &result {
                    tracing::debug!(partition, "membership change refused: {why}");
                }
                self.admin_reply(from, req, result);
            }
            Msg::Raft {
                from: peer,
                messages,
            } => {
                if peer != self.config.node_id {
                    self.peers.insert(peer, from);
                    self.core.step(peer, messages);
                }
            }
            other => {
                tracing::warn!(%from, "server ignores unexpected message {other:?}");
            }
        }
        Ok(())
    }

    /// The end of a graceful stop: waits until every record appended to
    /// the log is durable (the group commit in flight, if any).
    async fn finish(&mut self) -> io::Result<()> {
        if let Some(s) = self.storage.as_mut() {
            while s.pending_records() > 0 {
                if let Err(reason) = s.durable_changed().await {
                    return Err(io::Error::other(format!(
                        "storage failed while stopping: {reason}"
                    )));
                }
            }
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// With metrics on, notes when a request arrived (see `answered`).
    fn arrived(&mut self, to: ReplyTo, op: &'static str) {
        if !metrics::enabled() {
            return;
        }
        if self.requests.len() >= REQUESTS_TRACKED_MAX {
            // Requests nobody answered (dropped with a replica): forget them.
            self.requests.clear();
        }
        self.requests.insert(to, (self.rt.now(), op));
        ::metrics::gauge!("distkv_requests_in_flight").set(self.requests.len() as f64);
    }

    /// Records a reply to a request noted by `arrived`.
    fn answered(&mut self, to: SocketAddr, reply: &Msg) {
        if let Msg::TxnReply {
            result: Ok(state), ..
        } = reply
        {
            metrics::txn_state(state);
        }
        let (req, outcome) = match reply {
            Msg::ExecuteReply { req, result } => (*req, metrics::outcome(result)),
            Msg::TxnReply { req, result } => (*req, metrics::outcome(result)),
            _ => return,
        };
        if let Some((at, op)) = self.requests.remove(&ReplyTo { addr: to, req }) {
            metrics::request_done(op, outcome, self.rt.now().saturating_duration_since(at));
            ::metrics::gauge!("distkv_requests_in_flight").set(self.requests.len() as f64);
        }
    }

    /// Refreshes the gauges that describe the replicas and queues.
    fn refresh_metrics(&mut self, status: &[ReplicaStatus]) {
        let sessions = self
            .core
            .replicas()
            .values()
            .map(|r| r.store.session_count() as u64)
            .sum();
        metrics::replicas(status, sessions, &mut self.leaders);
        if let Some(s) = &self.storage {
            ::metrics::gauge!("distkv_wal_pending_records").set(s.pending_records() as f64);
            ::metrics::counter!("distkv_checkpoints_total").absolute(s.checkpoints_done());
        }
    }

    fn admin_reply(&self, to: SocketAddr, req: u64, result: Result<String, String>) {
        match encode_msg(&Msg::AdminReply { req, result }) {
            Ok(bytes) => self.net.send(to, bytes),
            Err(e) => tracing::error!("cannot encode reply: {e}"),
        }
    }

    /// Says in the log that the manager went silent or came back.
    fn log_contact(&self, notice: ContactNotice) {
        let manager: Vec<String> = self.config.managers.iter().map(|a| a.to_string()).collect();
        let manager = manager.join(",");
        match notice {
            ContactNotice::Unreachable { silent } => match self.core.map() {
                Some(map) => tracing::warn!(
                    "cannot reach the manager at {manager} (no reply for {} s); \
                     still serving with the current partition map (epoch {})",
                    silent.as_secs(),
                    map.epoch
                ),
                None if self.core.replicas().is_empty() => tracing::warn!(
                    "cannot reach the manager at {manager} (no reply for {} s); \
                     no partition map yet, so this server serves nothing until it answers",
                    silent.as_secs()
                ),
                None => tracing::warn!(
                    "cannot reach the manager at {manager} (no reply for {} s); \
                     no partition map yet, serving the {} replicas recovered from disk",
                    silent.as_secs(),
                    self.core.replicas().len()
                ),
            },
            ContactNotice::Reachable { silent } => tracing::info!(
                "reached the manager at {manager} after {} s without a reply",
                silent.as_secs()
            ),
        }
    }

    /// Carries out everything the core asked for, until it asks nothing.
    async fn flush(&mut self) -> io::Result<()> {
        loop {
            let out = self.core.take_output();
            if !out.is_empty() {
                self.perform(out).await?;
                continue;
            }
            // Sending what waited for the log may give the core more to do
            // (commits, replies).
            if !self.release()? {
                return Ok(());
            }
        }
    }

    async fn perform(&mut self, out: Output) -> io::Result<()> {
        let now = self.rt.now();
        self.report_due |= out.report_now;
        for &partition in &out.unhosted {
            if let Some(s) = self.storage.as_mut() {
                s.log_unhost(now, partition);
            }
        }
        for range in &out.hosted {
            if let Some(s) = self.storage.as_mut() {
                s.log_host(now, range);
            }
        }
        for &partition in &out.unhosted {
            // Dropped: what waited for its snapshot's file is moot.
            self.gates.remove(&partition);
        }
        for p in out.persist {
            if self.storage.is_none() {
                // In memory, "durable" is now.
                self.send_raft(group_by_destination(p.partition, p.messages));
                self.core.persisted(p.partition, p.last);
            } else if let Some(gate) = self.gates.get_mut(&p.partition) {
                gate.push_back(p);
            } else {
                self.log_persist(p);
            }
        }
        self.send_raft(out.messages);
        for job in out.snapshot_jobs {
            // O(data): off the event loop (see `SnapshotJob`).
            let (rt, done) = (self.rt.clone(), self.jobs_done.clone());
            self.rt.spawn(async move {
                let finished = rt.spawn_blocking(move || job.run()).await;
                let _ = done.send(finished);
            });
        }
        for (to, reply) in out.replies {
            if metrics::enabled() {
                self.answered(to, &reply);
            }
            match encode_msg(&reply) {
                Ok(bytes) => self.net.send(to, bytes),
                Err(e) => tracing::error!("cannot encode reply: {e}"),
            }
        }
        Ok(())
    }

    /// Logs one `Persist` (with storage): a snapshot's file is written off
    /// the event loop first, and the partition's records wait for it (see
    /// `gates`); anything else is appended now, and its messages wait for
    /// the log to be durable through it.
    fn log_persist(&mut self, mut p: Persist) {
        let Some(s) = self.storage.as_mut() else {
            return;
        };
        if let Some((meta, data)) = &p.snapshot {
            let (writer, done) = (s.snapshot_writer(), self.written.clone());
            let (partition, index, data) = (p.partition, meta.index, data.clone());
            self.rt.spawn(async move {
                let result = writer.write(partition, index, &data).await;
                let _ = done.send((partition, index, result.map_err(|e| e.to_string())));
            });
            self.gates.insert(p.partition, VecDeque::from([p]));
            return;
        }
        let now = self.rt.now();
        if p.hard_state.is_some() || !p.entries.is_empty() {
            s.log_raft(
                now,
                p.partition,
                p.hard_state.take(),
                std::mem::take(&mut p.entries),
            );
        }
        if !p.messages.is_empty() || p.last.is_some() {
            self.pending.push_back(Pending {
                lsn: s.last_appended(),
                partition: p.partition,
                messages: p.messages,
                last: p.last,
            });
        }
    }

    /// A snapshot's file is durable: log the record that refers to it, then
    /// the partition's records that waited (up to the next snapshot).
    fn snapshot_written(
        &mut self,
        partition: PartitionId,
        index: u64,
        result: Result<(), String>,
    ) -> io::Result<()> {
        if let Err(e) = result {
            return Err(io::Error::other(format!(
                "cannot store a received snapshot of partition {partition}, stopping: {e}"
            )));
        }
        let Some(mut gate) = self.gates.remove(&partition) else {
            return Ok(()); // dropped meanwhile
        };
        let Some(mut head) = gate.pop_front() else {
            return Ok(());
        };
        let Some((meta, data)) = head.snapshot.take() else {
            return Ok(());
        };
        if meta.index != index {
            return Ok(());
        }
        if let Some(s) = self.storage.as_mut() {
            s.log_snapshot_file(self.rt.now(), partition, meta, &data);
        }
        self.log_persist(head);
        while let Some(next) = gate.pop_front() {
            if let Some(waiting) = self.gates.get_mut(&partition) {
                // Another snapshot is being written: the rest waits for it.
                waiting.push_back(next);
            } else {
                self.log_persist(next);
            }
        }
        Ok(())
    }

    /// Sends what waited for the durable log and tells the core. Returns
    /// whether anything was released.
    fn release(&mut self) -> io::Result<bool> {
        let Some(s) = self.storage.as_ref() else {
            return Ok(false);
        };
        let durable = s.durable().map_err(|reason| {
            io::Error::other(format!(
                "storage failed, stopping (restart to recover from disk): {reason}"
            ))
        })?;
        let mut released = false;
        while self.pending.front().is_some_and(|p| p.lsn <= durable) {
            let p = self.pending.pop_front().unwrap();
            self.send_raft(group_by_destination(p.partition, p.messages));
            self.core.persisted(p.partition, p.last);
            released = true;
        }
        Ok(released)
    }

    fn send_raft(&self, batches: BTreeMap<NodeId, Vec<(PartitionId, Message)>>) {
        for (to, messages) in batches {
            let Some(&addr) = self.peers.get(&to) else {
                tracing::debug!(to, "no address for server yet; dropping Raft messages");
                continue;
            };
            let mut batch = Vec::new();
            let mut bytes = 0;
            for (partition, msg) in messages {
                let size = message_size(&msg);
                if !batch.is_empty() && bytes + size > BATCH_BYTES {
                    self.send_batch(addr, std::mem::take(&mut batch));
                    bytes = 0;
                }
                bytes += size;
                batch.push((partition, msg));
            }
            if !batch.is_empty() {
                self.send_batch(addr, batch);
            }
        }
    }

    fn send_batch(&self, addr: SocketAddr, messages: Vec<(PartitionId, Message)>) {
        let msg = Msg::Raft {
            from: self.config.node_id,
            messages,
        };
        match encode_msg(&msg) {
            Ok(bytes) => {
                if metrics::enabled() {
                    ::metrics::counter!("distkv_raft_batches_sent_total").increment(1);
                    ::metrics::counter!("distkv_raft_sent_bytes_total")
                        .increment(bytes.len() as u64);
                }
                self.net.send(addr, bytes)
            }
            Err(e) => tracing::error!(%addr, "cannot send Raft messages: {e}"),
        }
    }
}

/// Requests remembered for their latency at most (see `Driver::arrived`).
const REQUESTS_TRACKED_MAX: usize = 100_000;

/// The `op` label of a client command: its one operation, or `multi`.
fn op_label(ops: &[Op]) -> &'static str {
    match ops {
        [Op::Get { .. }] => "get",
        [Op::Put { .. }] => "put",
        [Op::Swap { .. }] => "swap",
        [Op::Delete { .. }] => "delete",
        [Op::Scan { .. }] => "scan",
        [Op::Check { .. }] => "check",
        _ => "multi",
    }
}

/// The `op` label of a transaction step.
fn txn_label(op: &TxnOp) -> &'static str {
    match op {
        TxnOp::Prepare(_) => "txn_prepare",
        TxnOp::Resolve { .. } => "txn_resolve",
        TxnOp::Fence { .. } => "txn_fence",
        TxnOp::Batch { .. } => "txn_batch",
    }
}

fn group_by_destination(
    partition: PartitionId,
    messages: Vec<Message>,
) -> BTreeMap<NodeId, Vec<(PartitionId, Message)>> {
    let mut out: BTreeMap<NodeId, Vec<(PartitionId, Message)>> = BTreeMap::new();
    for m in messages {
        out.entry(m.to).or_default().push((partition, m));
    }
    out
}

/// A rough upper bound of a message's encoded size.
fn message_size(msg: &Message) -> usize {
    use crate::raft::MessageBody;
    128 + match &msg.body {
        MessageBody::Append { entries, .. } => {
            entries.iter().map(|e| e.payload_len() + 32).sum::<usize>()
        }
        MessageBody::InstallSnapshot(chunk) => chunk.data.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::PartitionStore;
    use crate::map::PartitionMap;
    use crate::op::{parse_op, OpResult};
    use crate::raft::Role;
    use crate::wire::ExecError;
    use std::collections::BTreeSet;

    const CLIENT: &str = "127.0.0.9:1";

    /// Server cores wired together in memory, driven like `run_server`
    /// drives one in memory mode (durable = at once).
    struct Cores {
        cores: Vec<ServerCore>,
        down: BTreeSet<NodeId>,
        replies: BTreeMap<u64, Result<Vec<OpResult>, ExecError>>,
        admin_replies: BTreeMap<u64, Result<String, String>>,
        next_req: u64,
        /// Every server's wall clock (and the clients'), ms since the epoch.
        now_ms: u64,
        /// Snapshot jobs run at once, unless held here (to look at them).
        held_jobs: Option<Vec<(usize, SnapshotJob)>>,
    }

    const T0: u64 = 1_800_000_000_000;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| format!("127.0.0.1:{}", 1000 + i).parse().unwrap())
            .collect()
    }

    fn request(session: u64, seq: u64, sent_ms: u64, ops: &[&str]) -> Request {
        Request {
            session,
            seq,
            sent_ms,
            ops: ops.iter().map(|o| parse_op(o).unwrap()).collect(),
        }
    }

    impl Cores {
        fn new(n: usize) -> Cores {
            Cores::with_tuning(n, RaftTuning::default())
        }

        fn with_tuning(n: usize, tuning: RaftTuning) -> Cores {
            let map = PartitionMap::build(&[("t".into(), 90)], &addrs(n), n).unwrap();
            Cores::with_map(n, tuning, map)
        }

        fn with_map(n: usize, tuning: RaftTuning, map: PartitionMap) -> Cores {
            let mut c = Cores {
                cores: (0..n as u64)
                    .map(|i| ServerCore::new(i, BTreeMap::new(), tuning.clone(), i))
                    .collect(),
                down: BTreeSet::new(),
                replies: BTreeMap::new(),
                admin_replies: BTreeMap::new(),
                next_req: 1,
                now_ms: T0,
                held_jobs: None,
            };
            for core in &mut c.cores {
                core.install_map(map.clone());
            }
            c.pump();
            c
        }

        /// Delivers everything until no core has anything to do.
        fn pump(&mut self) {
            loop {
                let mut quiet = true;
                for i in 0..self.cores.len() {
                    let out = self.cores[i].take_output();
                    if out.is_empty() {
                        continue;
                    }
                    quiet = false;
                    let mut sends = out.messages;
                    for p in out.persist {
                        for m in p.messages {
                            sends.entry(m.to).or_default().push((p.partition, m));
                        }
                        self.cores[i].persisted(p.partition, p.last);
                    }
                    if self.down.contains(&(i as u64)) {
                        continue; // a crashed server sends nothing
                    }
                    for (to, msgs) in sends {
                        if !self.down.contains(&to) {
                            self.cores[to as usize].step(i as u64, msgs);
                        }
                    }
                    for (_, reply) in out.replies {
                        match reply {
                            Msg::ExecuteReply { req, result } => {
                                self.replies.insert(req, result);
                            }
                            Msg::AdminReply { req, result } => {
                                self.admin_replies.insert(req, result);
                            }
                            _ => {}
                        }
                    }
                    for job in out.snapshot_jobs {
                        match self.held_jobs.as_mut() {
                            Some(held) => held.push((i, job)),
                            None => self.cores[i].snapshot_done(job.run()),
                        }
                    }
                }
                if quiet {
                    return;
                }
            }
        }

        fn ticks(&mut self, n: usize) {
            for _ in 0..n {
                for i in 0..self.cores.len() {
                    if !self.down.contains(&(i as u64)) {
                        self.cores[i].tick();
                    }
                }
                self.pump();
            }
        }

        fn leader(&self, partition: PartitionId) -> Option<NodeId> {
            let leaders: Vec<NodeId> = (0..self.cores.len() as u64)
                .filter(|i| !self.down.contains(i))
                .filter(|&i| {
                    self.cores[i as usize]
                        .replicas()
                        .get(&partition)
                        .is_some_and(|r| r.raft.role() == Role::Leader)
                })
                .collect();
            assert!(leaders.len() <= 1, "two live leaders: {leaders:?}");
            leaders.first().copied()
        }

        /// Sends a command to `node` and returns its reply, if one came.
        fn exec(
            &mut self,
            node: NodeId,
            session: u64,
            seq: u64,
            partition: PartitionId,
            ops: &[&str],
        ) -> Option<Result<Vec<OpResult>, ExecError>> {
            let request = request(session, seq, self.now_ms, ops);
            self.send(node, partition, request)
        }

        /// Sends `request` to `node` at the current time.
        fn send(
            &mut self,
            node: NodeId,
            partition: PartitionId,
            request: Request,
        ) -> Option<Result<Vec<OpResult>, ExecError>> {
            let req = self.next_req;
            self.next_req += 1;
            let to = ReplyTo {
                addr: CLIENT.parse().unwrap(),
                req,
            };
            self.cores[node as usize].execute(to, partition, request, self.now_ms);
            self.pump();
            self.replies.remove(&req)
        }
    }

    #[test]
    fn a_write_commits_on_the_leader_and_reaches_every_replica() {
        let mut c = Cores::new(3);
        assert_eq!(c.leader(0), None, "no leader before an election timeout");
        c.ticks(40);
        // Fresh replicas listen for two election timeouts (amnesia guard)
        // before they vote, so the first election ends within four.
        let leader = c.leader(0).expect("a leader after four election timeouts");
        let follower = (leader + 1) % 3;
        assert_eq!(
            c.exec(follower, 1, 1, 0, &["PUT t5 a"]),
            Some(Err(ExecError::NotLeader {
                node_id: follower,
                partition: 0,
                leader: Some(leader)
            })),
            "a follower refuses and names the leader"
        );
        assert_eq!(
            c.exec(leader, 1, 1, 0, &["PUT t5 a"]),
            Some(Ok(vec![OpResult::Put { found: false }]))
        );
        assert_eq!(
            c.exec(leader, 1, 2, 0, &["GET t5"]),
            Some(Ok(vec![OpResult::Get(Some(b"a".to_vec()))])),
            "a ReadIndex read sees the write"
        );
        c.ticks(3); // followers learn the commit index
        for core in &c.cores {
            let replica = &core.replicas()[&0];
            let mut store = replica.store.clone();
            let get = [parse_op("GET t5").unwrap()];
            assert_eq!(
                store.execute(&get).unwrap(),
                vec![OpResult::Get(Some(b"a".to_vec()))],
                "server {} applied the write",
                core.node_id()
            );
        }
    }

    #[test]
    fn after_the_leader_crashes_a_retry_gets_the_original_outcome_once() {
        let mut c = Cores::new(3);
        c.ticks(40);
        let old = c.leader(0).unwrap();
        assert_eq!(
            c.exec(old, 7, 1, 0, &["SWAP t1 x"]),
            Some(Ok(vec![OpResult::Swap(None)]))
        );
        assert_eq!(
            c.exec(old, 7, 2, 0, &["PUT t1 y"]),
            Some(Ok(vec![OpResult::Put { found: false }]))
        );
        c.down.insert(old);
        c.ticks(45);
        let new = c.leader(0).expect("the survivors elect a new leader");
        assert_ne!(new, old);
        // The client never saw the reply to seq 2 and retries it here: the
        // session table answers with the original outcome, not "found".
        assert_eq!(
            c.exec(new, 7, 2, 0, &["PUT t1 y"]),
            Some(Ok(vec![OpResult::Put { found: false }]))
        );
        assert_eq!(
            c.exec(new, 7, 3, 0, &["GET t1"]),
            Some(Ok(vec![OpResult::Get(Some(b"y".to_vec()))]))
        );
        assert_eq!(
            c.exec(new, 7, 1, 0, &["SWAP t1 x"]).map(|r| r.is_err()),
            Some(true),
            "a delayed duplicate of an older request is refused"
        );
    }

    /// Raft dissertation §6.3: the leader stamps its clock into every
    /// command, and every replica expires idle sessions by that log time,
    /// so the session tables stay bounded and identical on all replicas; a
    /// retry that comes after its session expired is refused, not applied
    /// a second time.
    #[test]
    fn replicas_expire_sessions_alike_by_the_leaders_clock() {
        let mut c = Cores::new(3);
        c.ticks(40);
        let leader = c.leader(0).unwrap();
        let ttl_s = RaftTuning::SESSION_TTL_DEFAULT.as_secs();
        // A new session per command, one command per second of leader time.
        let mut counts = Vec::new();
        for i in 0..3 * ttl_s {
            c.now_ms = T0 + i * 1000;
            let reply = c.exec(leader, 1000 + i, 1, 0, &[&format!("PUT t5 v{i}")]);
            assert!(matches!(reply, Some(Ok(_))), "{reply:?}");
            counts.push(
                c.cores[leader as usize].replicas()[&0]
                    .store
                    .session_count(),
            );
        }
        assert_eq!(counts[ttl_s as usize + 10], *counts.last().unwrap(), "flat");
        assert!(
            *counts.iter().max().unwrap() <= ttl_s as usize + 2,
            "{counts:?}"
        );
        c.ticks(3); // followers learn the commit index
        let stores: Vec<&PartitionStore> = c
            .cores
            .iter()
            .map(|core| &core.replicas()[&0].store)
            .collect();
        assert!(stores.iter().all(|s| *s == stores[0]), "replicas agree");
        // Session 1000's first PUT ran at T0; its retry arrives now.
        let retry = request(1000, 1, T0, &["PUT t5 v0"]);
        let reply = c.send(leader, 0, retry);
        assert!(
            matches!(reply, Some(Err(ExecError::SessionExpired(_)))),
            "{reply:?}"
        );
        let last = format!("v{}", 3 * ttl_s - 1);
        assert_eq!(
            c.exec(leader, 1, 1, 0, &["GET t5"]),
            Some(Ok(vec![OpResult::Get(Some(last.into_bytes()))])),
            "the expired session's PUT did not run again"
        );
    }

    #[test]
    fn a_snapshot_for_a_follower_is_encoded_and_decoded_off_the_event_loop() {
        // ARCHITECTURE.md "Snapshots and large partitions": the core never
        // encodes or decodes a partition on the event loop; the leader hands
        // the driver one job with an O(1) copy of the store, asks for no
        // second one while it runs, and offers the bytes when they come
        // back; the follower hands over the whole received snapshot and
        // installs it once the driver decoded it.
        let tuning = RaftTuning {
            compact_entries: 4,
            ..RaftTuning::default()
        };
        let mut c = Cores::with_tuning(3, tuning);
        c.ticks(40);
        let leader = c.leader(0).expect("a leader");
        let behind = (leader + 1) % 3;
        c.down.insert(behind);
        for seq in 1..=20 {
            let put = format!("PUT t{seq} v{seq}");
            assert!(matches!(c.exec(leader, 1, seq, 0, &[&put]), Some(Ok(_))));
        }
        // A write after the copy is taken is not in the snapshot.
        c.held_jobs = Some(Vec::new());
        c.down.remove(&behind);
        c.ticks(3);
        let jobs = c.held_jobs.take().unwrap();
        assert_eq!(jobs.len(), 1, "one encode for the follower: {jobs:?}");
        assert!(matches!(
            c.exec(leader, 1, 21, 0, &["PUT t1 after"]),
            Some(Ok(_))
        ));
        let store = &c.cores[behind as usize].replicas()[&0].store;
        let get = |store: &crate::kv::PartitionStore, key: &str| {
            store
                .clone()
                .execute(&[parse_op(&format!("GET {key}")).unwrap()])
        };
        assert_eq!(
            get(store, "t20").unwrap(),
            vec![OpResult::Get(None)],
            "nothing arrives before the job is done"
        );
        c.held_jobs = Some(Vec::new());
        for (i, job) in jobs {
            assert_eq!(i as u64, leader);
            c.cores[i].snapshot_done(job.run());
        }
        c.pump();
        // The follower decodes the whole snapshot off its event loop too.
        let jobs = c.held_jobs.take().unwrap();
        assert!(
            matches!(jobs.as_slice(), [(i, SnapshotJob::Decode { .. })] if *i as u64 == behind),
            "one decode at the follower: {jobs:?}"
        );
        let store = &c.cores[behind as usize].replicas()[&0].store;
        assert_eq!(get(store, "t20").unwrap(), vec![OpResult::Get(None)]);
        for (i, job) in jobs {
            c.cores[i].snapshot_done(job.run());
        }
        c.pump();
        c.ticks(3);
        let store = &c.cores[behind as usize].replicas()[&0].store;
        assert_eq!(
            get(store, "t20").unwrap(),
            vec![OpResult::Get(Some(b"v20".to_vec()))]
        );
        assert_eq!(
            get(store, "t1").unwrap(),
            vec![OpResult::Get(Some(b"after".to_vec()))],
            "entries after the snapshot follow it"
        );
    }

    #[test]
    fn an_isolated_leader_neither_commits_nor_serves_reads() {
        let mut c = Cores::new(3);
        c.ticks(40);
        let old = c.leader(0).unwrap();
        assert_eq!(
            c.exec(old, 1, 1, 0, &["PUT t2 before"]),
            Some(Ok(vec![OpResult::Put { found: false }]))
        );
        // Cut the leader off: it hears nothing and nothing it sends arrives.
        c.down.insert(old);
        let to = |req| ReplyTo {
            addr: CLIENT.parse().unwrap(),
            req,
        };
        let put = request(2, 1, T0, &["PUT t2 lost"]);
        c.cores[old as usize].execute(to(100), 0, put, T0);
        let get = request(3, 1, T0, &["GET t2"]);
        c.cores[old as usize].execute(to(101), 0, get, T0);
        c.pump();
        assert!(c.replies.is_empty(), "nothing is answered without a quorum");
        // The others elect a leader and overwrite the value.
        c.ticks(45);
        let new = c.leader(0).unwrap();
        assert_eq!(
            c.exec(new, 4, 1, 0, &["PUT t2 after"]),
            Some(Ok(vec![OpResult::Put { found: true }]))
        );
        // The old leader steps down (check-quorum) on its own ticks and
        // answers both requests honestly.
        for _ in 0..45 {
            c.cores[old as usize].tick();
            let out = c.cores[old as usize].take_output();
            for (_, reply) in out.replies {
                if let Msg::ExecuteReply { req, result } = reply {
                    c.replies.insert(req, result);
                }
            }
        }
        assert!(matches!(
            c.replies.get(&100),
            Some(Err(ExecError::LeaderChanged { .. }))
        ));
        assert!(matches!(
            c.replies.get(&101),
            Some(Err(ExecError::NotLeader { .. }))
        ));
    }

    #[test]
    fn refuses_until_it_has_a_map_then_only_its_partitions() {
        let mut core = ServerCore::new(5, BTreeMap::new(), RaftTuning::default(), 1);
        let to = ReplyTo {
            addr: CLIENT.parse().unwrap(),
            req: 1,
        };
        core.execute(to, 0, request(1, 1, T0, &["GET t1"]), T0);
        let out = core.take_output();
        assert!(matches!(
            &out.replies[..],
            [(
                _,
                Msg::ExecuteReply {
                    result: Err(ExecError::NotReady { node_id: 5 }),
                    ..
                }
            )]
        ));
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(); 1];
        let mut map = PartitionMap::build(&[("t".into(), 10)], &servers, 1).unwrap();
        map.servers.insert(5, "127.0.0.1:5".parse().unwrap());
        core.install_map(map);
        assert!(
            core.replicas().is_empty(),
            "no partition is placed on server 5"
        );
        core.execute(to, 0, request(1, 1, T0, &["GET t1"]), T0);
        let out = core.take_output();
        assert!(matches!(
            &out.replies[..],
            [(
                _,
                Msg::ExecuteReply {
                    result: Err(ExecError::WrongPartition {
                        node_id: 5,
                        partition: 0
                    }),
                    ..
                }
            )]
        ));
    }

    /// Re-replication end to end, without IO: a manager core hears the
    /// servers' heartbeats, declares a silent server dead, and has the
    /// partition's leader add a learner on the spare server, promote it
    /// once caught up and remove the dead replica; the map follows the
    /// group, and the dead server, back, drops its replica.
    #[test]
    fn a_dead_servers_replica_is_replaced_through_the_group_log() {
        use crate::manager::ManagerCore;
        use std::time::{Duration, Instant};
        let map = PartitionMap::build(&[("t".into(), 1)], &addrs(4), 3).unwrap();
        assert_eq!(map.partitions[&0].replicas, vec![0, 1, 2]);
        let mut c = Cores::with_map(4, RaftTuning::default(), map.clone());
        c.ticks(40);
        let leader = c.leader(0).expect("a leader");
        assert_eq!(
            c.exec(leader, 1, 1, 0, &["PUT t0 kept"]),
            Some(Ok(vec![OpResult::Put { found: false }]))
        );
        let dead_after = Duration::from_secs(5);
        let start = Instant::now();
        let mut manager = ManagerCore::new(map, start, dead_after, 3);
        // The victim is a follower (a leader is never removed).
        let victim = (0..3).find(|&n| n != leader).unwrap();
        c.down.insert(victim);
        let mut now = start;
        let mut changes = Vec::new();
        // One "second" per round: 20 ticks, heartbeats, a plan.
        for _ in 0..40 {
            now += Duration::from_secs(1);
            c.ticks(20);
            for i in 0..4u64 {
                if c.down.contains(&i) {
                    continue;
                }
                let register = Msg::Register {
                    node_id: i,
                    addr: addrs(4)[i as usize],
                    epoch: c.cores[i as usize].epoch(),
                    join: false,
                    replicas: c.cores[i as usize].status(),
                };
                match manager.handle(register, now) {
                    Some(Msg::RegisterReply { result: Ok(map) }) => {
                        c.cores[i as usize].install_map(map)
                    }
                    Some(Msg::Registered { .. }) => {} // its map is current
                    other => panic!("registration refused: {other:?}"),
                }
            }
            c.pump();
            for (to, msg) in manager.plan(now) {
                let Msg::ChangeReplicas {
                    req,
                    partition,
                    voters,
                    learners,
                    change,
                } = msg
                else {
                    panic!("unexpected {msg:?}");
                };
                let node = addrs(4).iter().position(|a| *a == to).unwrap();
                let result =
                    c.cores[node].change_replicas(partition, &voters, &learners, change.clone());
                if result.is_ok() {
                    changes.push(change);
                }
                manager.handle(Msg::AdminReply { req, result }, now);
                c.pump();
            }
        }
        use crate::raft::ConfChange;
        assert_eq!(
            changes,
            vec![
                ConfChange::AddLearner(3),
                ConfChange::AddVoter(3),
                ConfChange::Remove(victim)
            ],
            "learner first, promoted once caught up, then the dead replica goes"
        );
        let mut voters = manager.map().partitions[&0].replicas.clone();
        voters.sort_unstable();
        let mut expected: Vec<NodeId> = (0..4).filter(|&n| n != victim).collect();
        expected.sort_unstable();
        assert_eq!(voters, expected, "the map follows the group");
        assert!(manager.map().groups[&0].learners.is_empty());
        let leader = c.leader(0).expect("still led");
        assert_eq!(
            c.exec(leader, 1, 2, 0, &["GET t0"]),
            Some(Ok(vec![OpResult::Get(Some(b"kept".to_vec()))]))
        );
        let mut store = c.cores[3].replicas()[&0].store.clone();
        assert_eq!(
            store.execute(&[parse_op("GET t0").unwrap()]).unwrap(),
            vec![OpResult::Get(Some(b"kept".to_vec()))],
            "the new replica has the data"
        );
        // The dead server comes back with its old replica: the map tells
        // it the group moved on, and it drops the replica for good.
        c.down.remove(&victim);
        let v = victim as usize;
        assert!(c.cores[v].replicas().contains_key(&0));
        c.cores[v].install_map(manager.map().clone());
        assert!(!c.cores[v].replicas().contains_key(&0), "dropped");
        assert_eq!(c.cores[v].take_output().unhosted, vec![0]);
        // A stale placement (a map from a restarted manager, not yet
        // taught the membership) does not bring it back.
        let mut stale = PartitionMap::build(&[("t".into(), 1)], &addrs(4), 3).unwrap();
        stale.epoch = manager.map().epoch + 1;
        c.cores[v].install_map(stale);
        assert!(!c.cores[v].replicas().contains_key(&0), "not recreated");
        c.ticks(60);
        assert_eq!(
            c.leader(0),
            Some(leader),
            "the removed replica never disturbed the group"
        );
    }

    /// Reads `key` straight from `node`'s replica of `partition`.
    fn peek(c: &Cores, node: usize, partition: PartitionId, key: &str) -> OpResult {
        let mut store = c.cores[node].replicas()[&partition].store.clone();
        let get = [parse_op(&format!("GET {key}")).unwrap()];
        store.execute(&get).unwrap().remove(0)
    }

    #[test]
    fn a_split_through_the_log_makes_a_new_group_on_the_same_replicas() {
        use crate::manager::ManagerCore;
        use crate::map::split_child_id;
        use std::time::{Duration, Instant};
        let map = PartitionMap::build(&[("t".into(), 90)], &addrs(3), 3).unwrap();
        let mut c = Cores::with_map(3, RaftTuning::default(), map.clone());
        c.ticks(40);
        let leader = c.leader(0).expect("a leader");
        for n in 0..30u64 {
            let put = format!("PUT t{n} v{n}");
            assert!(matches!(c.exec(leader, 1, n + 1, 0, &[&put]), Some(Ok(_))));
        }
        // One follower misses the split: it comes back later.
        let lagging = (leader + 1) % 3;
        c.down.insert(lagging);
        let req = c.next_req;
        c.next_req += 1;
        let to = ReplyTo {
            addr: CLIENT.parse().unwrap(),
            req,
        };
        let split_at = c.cores[leader as usize].replicas()[&0]
            .raft
            .log()
            .last_index()
            + 1;
        c.cores[leader as usize]
            .split(to, 0, None, c.now_ms)
            .unwrap();
        c.pump();
        let child = split_child_id(0, split_at);
        let answer = c.admin_replies.remove(&req).expect("answered once applied");
        assert_eq!(
            answer,
            Ok(format!("partition 0 split: t15 on is partition {child}"))
        );
        for node in (0..3).filter(|&n| n != lagging as usize) {
            let replicas = c.cores[node].replicas();
            assert_eq!(replicas[&0].store.range().end, Some(15));
            assert_eq!(replicas[&0].store.len(), 15);
            assert_eq!(replicas[&child].store.len(), 15, "server {node}");
            assert_eq!(replicas[&child].store.range().start, 15);
        }
        c.ticks(60);
        let child_leader = c.leader(child).expect("the new group elects a leader");
        assert_eq!(
            c.exec(child_leader, 1, 31, child, &["SWAP t20 new"]),
            Some(Ok(vec![OpResult::Swap(Some(b"v20".to_vec()))]))
        );
        // The old partition refuses the keys it no longer holds: the client
        // routes again by a newer map.
        let leader = c.leader(0).expect("still led");
        assert!(matches!(
            c.exec(leader, 1, 32, 0, &["GET t20"]),
            Some(Err(ExecError::Rejected(
                crate::kv::ApplyError::WrongPartition { .. }
            )))
        ));
        // The manager learns the split from the leader's heartbeat.
        let now = Instant::now();
        let mut manager = ManagerCore::new(map, now, Duration::from_secs(60), 3);
        let register = Msg::Register {
            node_id: leader,
            addr: addrs(3)[leader as usize],
            epoch: 1,
            join: false,
            replicas: c.cores[leader as usize].status(),
        };
        let Some(Msg::RegisterReply {
            result: Ok(learned),
        }) = manager.handle(register, now)
        else {
            panic!("registration refused");
        };
        learned.validate().unwrap();
        assert_eq!(learned.tables["t"].partitions, vec![0, child, 1, 2]);
        assert_eq!(
            (learned.partitions[&0].start, learned.partitions[&0].end),
            (0, Some(15))
        );
        assert_eq!(
            (
                learned.partitions[&child].start,
                learned.partitions[&child].end
            ),
            (15, Some(30))
        );
        assert!(learned.groups[&child].initial.is_empty());
        // The lagging server gets the new map first: it creates an empty
        // replica of the new partition, which must not campaign or count as
        // holding anything; then it catches up and ends with the data.
        c.cores[lagging as usize].install_map(learned);
        c.down.remove(&lagging);
        assert_eq!(
            c.cores[lagging as usize].replicas()[&child]
                .raft
                .log()
                .last_index(),
            0
        );
        c.ticks(60);
        assert_eq!(c.leader(child), Some(child_leader), "not disturbed");
        let l = lagging as usize;
        assert_eq!(
            peek(&c, l, child, "t20"),
            OpResult::Get(Some(b"new".to_vec()))
        );
        assert_eq!(
            peek(&c, l, child, "t29"),
            OpResult::Get(Some(b"v29".to_vec()))
        );
        assert_eq!(c.cores[l].replicas()[&child].store.len(), 15);
        assert_eq!(c.cores[l].replicas()[&0].store.len(), 15);
        assert_eq!(c.cores[l].replicas()[&0].store.range().end, Some(15));
    }
}
