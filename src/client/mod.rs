//! The client library: routing, request ids, retries, deadlines.
//!
//! ```text
//!  Session::execute(ops)
//!    1. validate (limits, known tables)              -> ClientError::Invalid
//!    2. split by partition (a SCAN may span several)  using the cached map
//!    3. per part: Execute(session, seq) to the partition's leader (cached;
//!       followers answer NotLeader with a hint; with no hint, or no reply,
//!       try the next replica); retry with the SAME (session, seq) until the
//!       deadline, so the replicated session table applies it at most once;
//!       on WrongPartition refresh the map
//!    4. merge results back into operation order
//! ```
//! A write that got no reply by the deadline is reported as
//! [`ClientError::UnknownOutcome`], never as "not applied". Every attempt
//! also carries the wall-clock time of the first (`sent_ms`): a partition
//! that expired the session refuses a command first sent long ago, since it
//! may have run it already (ARCHITECTURE.md "Sessions").
//!
//! A command whose operations span partitions runs as one transaction
//! coordinated by this library (`Session::run_txn`, docs/transactions.md):
//! atomic and strictly serializable like a single-partition command.

use crate::kv::{AbortReason, ApplyError, Prepare, Resolution, TxnId, TxnOp, TxnState};
use crate::manager::status::ClusterStatus;
use crate::map::{NodeId, PartitionId, PartitionMap};
use crate::op::{validate_command, Op, OpError, OpResult};
use crate::rt::{timeout, Net, Runtime};
use crate::wire::{decode_msg, encode_msg, ExecError, Msg};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Client configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The managers, where the partition map comes from: one, or every
    /// manager of a replicated control plane (`manager --peers`; the
    /// client asks one and follows its redirect to the leader).
    pub managers: Vec<SocketAddr>,
    /// A map that never changes, for a cluster without a manager (the
    /// managers' own control group): no manager is asked.
    pub fixed_map: Option<PartitionMap>,
    /// Deadline for a whole command, retries included.
    pub command_timeout: Duration,
    /// How long to wait for one reply before retrying.
    pub attempt_timeout: Duration,
    /// Pause before retrying after a server said "not now"; also the first
    /// pause between attempts to reach the manager.
    pub retry_backoff: Duration,
    /// Longest pause between attempts to reach the manager (the pause
    /// doubles from `retry_backoff` up to this, with jitter).
    pub retry_backoff_max: Duration,
}

impl ClientConfig {
    pub fn new(manager_addr: SocketAddr) -> ClientConfig {
        ClientConfig::with_managers(vec![manager_addr])
    }

    /// Several managers (a replicated control plane); at least one.
    pub fn with_managers(managers: Vec<SocketAddr>) -> ClientConfig {
        assert!(!managers.is_empty(), "a client needs a manager");
        ClientConfig {
            managers,
            fixed_map: None,
            command_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_millis(1000),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
        }
    }
}

/// Why a command did not (certainly) succeed. The variant says what is known
/// about its effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Refused before anything was sent. `index` is the offending operation.
    #[error("{error}")]
    Invalid {
        index: Option<usize>,
        error: OpError,
    },
    /// A server refused the command as a whole; nothing was applied.
    #[error("{0}")]
    Rejected(String),
    /// Nothing was applied: no server could take it before the deadline.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It may or may not have been applied.
    #[error("unknown outcome: {0}")]
    UnknownOutcome(String),
    /// Operation `index` (0-based, in the command as given) is a CHECK that
    /// did not hold: `key` held `actual` (`None`: absent). Nothing was
    /// applied.
    #[error("check failed: op {}", index + 1)]
    CheckFailed {
        index: usize,
        key: crate::key::Key,
        actual: Option<Vec<u8>>,
    },
}

struct Inner<R: Runtime> {
    rt: R,
    net: R::Net,
    config: ClientConfig,
    map: Mutex<Option<Arc<PartitionMap>>>,
    /// The manager asked first: the control plane's leader, as last seen.
    manager: Mutex<SocketAddr>,
    /// The position in `config.managers` of the last listed manager asked
    /// (a redirect may name an address the list does not have).
    listed: AtomicU64,
    /// The leader last seen for each partition.
    /// With the epoch of the map held when it was learned.
    leaders: Mutex<HashMap<PartitionId, (NodeId, u64)>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Msg>>>,
    next_req: AtomicU64,
    /// Transactions across partitions run through this client.
    txn_committed: AtomicU64,
    txn_retries: AtomicU64,
    txn_aborted: AtomicU64,
    /// Decisions of transactions not yet delivered (see [`Client::settle`]).
    resolving: AtomicU64,
    /// Decisions waiting to be sent, per participant (see
    /// [`Session::resolve_in_background`]).
    decisions: Mutex<HashMap<PartitionId, Decisions>>,
}

/// The decisions for one partition that wait to be sent: the next prepare
/// this client sends there carries them, or, after [`DECISION_DELAY`]
/// without one, a request of their own.
#[derive(Default)]
struct Decisions {
    queued: Vec<Resolution>,
    /// A task is on its way to send them on their own.
    flushing: bool,
}

/// How long decisions wait for a prepare to the same partition to carry
/// them before they are sent on their own. Under load one comes much
/// sooner; a lone session's next transaction carries its own decision
/// anyway (`committed_before`). Locks wait for it, so it stays short.
const DECISION_DELAY: Duration = Duration::from_millis(1);

/// At most this many decisions travel in one request.
const DECISIONS_MAX: usize = 512;

/// What this client's transactions across partitions came to (see
/// [`Client::txn_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TxnCounts {
    /// Commands spanning partitions that committed.
    pub committed: u64,
    /// Attempts that lost a conflict (or were fenced by recovery) and were
    /// run again, invisibly to the user.
    pub retries: u64,
    /// Commands spanning partitions refused as a whole (a CHECK that did not
    /// hold, an invalid operation, a limit).
    pub aborted: u64,
}

impl TxnCounts {
    /// The counts since `earlier`.
    pub fn since(&self, earlier: &TxnCounts) -> TxnCounts {
        TxnCounts {
            committed: self.committed - earlier.committed,
            retries: self.retries - earlier.retries,
            aborted: self.aborted - earlier.aborted,
        }
    }
}

/// A connection to a cluster, shared by any number of [`Session`]s.
pub struct Client<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Client<R> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
        }
    }
}

/// A sequential client: one command at a time, numbered, so retries are safe.
pub struct Session<R: Runtime> {
    client: Client<R>,
    id: u64,
    seq: u64,
    /// This session's last committed transaction and its participants:
    /// the next prepare at one of them carries its decision, so its locks
    /// are released there before the next command needs them (its
    /// background resolve may still be in flight).
    last_commit: Option<(TxnId, Vec<PartitionId>)>,
}

/// One command of a session, as every attempt of it names it.
#[derive(Clone, Copy, Debug)]
struct CommandId {
    session: u64,
    seq: u64,
    /// This process's wall clock when the command was first sent.
    sent_ms: u64,
}

/// What became of one request.
enum Answer {
    Reply(Msg),
    /// No reply in time: the request may or may not have been applied.
    NoReply,
    /// The request certainly never left this process (peer unreachable).
    Undelivered,
}

/// A command routed by one map: each operation's partitions, and each
/// partition's operations (indexes into the command, and the operations as
/// that partition gets them: SCANs narrowed to its range).
struct Route {
    touched: Vec<Vec<PartitionId>>,
    parts: BTreeMap<PartitionId, Vec<usize>>,
    ops: BTreeMap<PartitionId, Vec<Op>>,
}

impl Route {
    fn new(map: &PartitionMap, ops: &[Op]) -> Result<Route, ClientError> {
        let mut route = Route {
            touched: Vec::with_capacity(ops.len()),
            parts: BTreeMap::new(),
            ops: BTreeMap::new(),
        };
        for (i, op) in ops.iter().enumerate() {
            let partitions = map
                .partitions_of(op)
                .map_err(|error| ClientError::Invalid {
                    index: Some(i),
                    error,
                })?;
            let mut ids = Vec::with_capacity(partitions.len());
            for p in partitions {
                route.parts.entry(p.id).or_default().push(i);
                route
                    .ops
                    .entry(p.id)
                    .or_default()
                    .push(PartitionMap::clip(op, p));
                ids.push(p.id);
            }
            route.touched.push(ids);
        }
        Ok(route)
    }
}

/// How a command routed by one map ended: done, or refused by a partition
/// that split since (route it again).
enum Routed<T> {
    Done(Result<T, ClientError>),
    Moved(String),
}

/// What a client asks of one partition.
#[derive(Clone)]
enum PartRequest {
    /// A command, or the part of one, run on its own.
    Execute(Vec<Op>),
    /// A step of a cross-partition transaction.
    Txn(TxnOp),
}

/// A partition's successful answer.
enum PartReply {
    Results(Vec<OpResult>),
    Txn(TxnState),
}

/// What one partition's part of a command came to.
enum PartOutcome {
    Done(PartReply),
    /// Refused as a whole by the server: certainly not applied.
    Rejected(String),
    /// Refused because its operation `op` (0-based, within the part) is a
    /// CHECK that did not hold; certainly not applied.
    CheckFailed {
        op: usize,
        key: crate::key::Key,
        actual: Option<Vec<u8>>,
    },
    /// Certainly not applied (never reached, or refused as "not now").
    NotApplied(String),
    /// Refused because the partition no longer holds all of it (it split
    /// since the map was fetched): not applied, and never will be there.
    /// Route it again by a newer map.
    Moved(String),
    /// May have been applied.
    Unknown(String),
}

/// Where a simulated coordinator crash (see [`faults`]) stops a
/// transaction attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// After some of the prepares left (each once), before any answer.
    WhilePreparing,
    /// Once the participants' answers decided the attempt (committed: every
    /// part prepared; or aborted), before the decision went anywhere.
    BeforeResolving,
    /// After the decision went to some participants (a commit: after the
    /// user got the reply).
    WhileResolving,
}

/// A reply of the wrong kind to an admin call.
fn unexpected(who: &str, reply: &Msg) -> ClientError {
    ClientError::Unavailable(format!("{who} answered with an unexpected {reply:?}"))
}

/// The error a crashed coordinator's user sees: nothing came back.
fn crash_error(txn: TxnId, when: &str) -> ClientError {
    ClientError::UnknownOutcome(format!(
        "the coordinator of transaction {txn} crashed {when} (simulated)"
    ))
}

/// Faults aimed at the transaction protocol, for the whole-system
/// simulation (feature `sim`; without it the rate is always 0): with
/// probability `rate` a transaction attempt's coordinator crashes at one of
/// the protocol's steps ([`Crash`]; the session goes on with its next
/// command, as a new coordinator would), and a prepare that reached its
/// partition arrives again up to 3 s later. Recovery must then resolve
/// every abandoned transaction, and no late prepare may revive an aborted
/// or finished one. Per thread, like the other simulated faults: a madsim
/// simulation runs on one thread.
#[cfg(feature = "sim")]
pub mod faults {
    use std::cell::Cell;

    thread_local! {
        static RATE: Cell<f64> = const { Cell::new(0.0) };
    }

    /// Turns the coordinator faults on (`rate` > 0) or off on this thread.
    pub fn set_coordinator_faults(rate: f64) {
        assert!((0.0..=1.0).contains(&rate), "coordinator fault rate {rate}");
        RATE.with(|r| r.set(rate));
    }

    pub(super) fn rate() -> f64 {
        RATE.with(Cell::get)
    }
}

#[cfg(not(feature = "sim"))]
mod faults {
    pub(super) fn rate() -> f64 {
        0.0
    }
}

impl<R: Runtime> Client<R> {
    /// Opens a network endpoint and fetches the partition map from the
    /// manager, retrying until the command deadline.
    pub async fn connect(rt: R, config: ClientConfig) -> Result<Client<R>, ClientError> {
        let net = rt.bind(None, None).await.map_err(|e| {
            ClientError::Unavailable(format!("cannot open a network endpoint: {e}"))
        })?;
        let inner = Arc::new(Inner {
            rt: rt.clone(),
            net,
            manager: Mutex::new(config.managers[0]),
            listed: AtomicU64::new(0),
            map: Mutex::new(config.fixed_map.clone().map(Arc::new)),
            config,
            leaders: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            txn_committed: AtomicU64::new(0),
            txn_retries: AtomicU64::new(0),
            txn_aborted: AtomicU64::new(0),
            resolving: AtomicU64::new(0),
            decisions: Mutex::new(HashMap::new()),
        });
        rt.spawn(recv_loop(inner.clone()));
        let client = Client { inner };
        let deadline = client.inner.rt.now() + client.inner.config.command_timeout;
        client.refresh_map(deadline).await?;
        Ok(client)
    }

    /// The runtime's clock (deadlines for [`Client::export_page`]).
    pub fn now(&self) -> Instant {
        self.inner.rt.now()
    }

    /// A new session with a random id.
    pub fn session(&self) -> Session<R> {
        Session {
            client: self.clone(),
            id: self.inner.rt.rand_u64(),
            seq: 0,
            last_commit: None,
        }
    }

    /// Waits, at most `max`, until the decisions of this client's
    /// transactions have been delivered (they are sent in the background
    /// after the reply). A program about to exit calls it, so the locks of
    /// its last transactions are released at once rather than by the
    /// participants' recovery a few seconds later.
    pub async fn settle(&self, max: Duration) {
        let rt = &self.inner.rt;
        let until = rt.now() + max;
        while self.inner.resolving.load(Ordering::Acquire) > 0 && rt.now() < until {
            rt.sleep(Duration::from_millis(2)).await;
        }
    }

    /// What the transactions across partitions run through this client
    /// (all its sessions) came to so far.
    pub fn txn_counts(&self) -> TxnCounts {
        let i = &self.inner;
        TxnCounts {
            committed: i.txn_committed.load(Ordering::Relaxed),
            retries: i.txn_retries.load(Ordering::Relaxed),
            aborted: i.txn_aborted.load(Ordering::Relaxed),
        }
    }

    /// The cached partition map.
    pub fn map(&self) -> Arc<PartitionMap> {
        self.inner
            .map
            .lock()
            .unwrap()
            .clone()
            .expect("connect fetched a map")
    }

    /// What the manager knows of the servers and partitions (`admin`).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        match self.ask_manager(|req| Msg::Status { req }).await? {
            (_, Msg::StatusReply { status, .. }) => Ok(status),
            (addr, other) => Err(unexpected(&format!("the manager at {addr}"), &other)),
        }
    }

    /// Asks the manager to move `partition`'s replica on server `from` to
    /// server `to` (`admin move`). `Ok`: the move started.
    pub async fn move_replica(
        &self,
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
    ) -> Result<String, ClientError> {
        let build = |req| Msg::MoveReplica {
            req,
            partition,
            from,
            to,
        };
        match self.ask_manager(build).await? {
            (_, Msg::AdminReply { result, .. }) => result.map_err(ClientError::Rejected),
            (addr, other) => Err(unexpected(&format!("the manager at {addr}"), &other)),
        }
    }

    /// One request to the control plane's leader, for the admin calls: the
    /// manager last seen leading first, then the one a refusing manager
    /// names, else each in turn, until one answers or the command deadline.
    /// Returns who answered, and what.
    async fn ask_manager(
        &self,
        build: impl Fn(u64) -> Msg,
    ) -> Result<(SocketAddr, Msg), ClientError> {
        let config = &self.inner.config;
        let rt = &self.inner.rt;
        let deadline = rt.now() + config.command_timeout;
        let mut last = String::from("no manager answered");
        let mut redirects = 0;
        loop {
            let now = rt.now();
            if now >= deadline {
                return Err(ClientError::Unavailable(last));
            }
            let addr = *self.inner.manager.lock().unwrap();
            // One manager: one request, waiting for it to the deadline.
            let wait = if config.managers.len() == 1 {
                deadline - now
            } else {
                config.attempt_timeout.min(deadline - now)
            };
            match self.ask(addr, "the manager", &build, wait).await {
                Ok(Msg::NotManagerLeader { leader, .. }) => {
                    last = format!("the manager at {addr} does not lead the control plane");
                    self.next_manager(addr, leader);
                    redirects += 1;
                    if leader.is_none() || redirects > 1 {
                        // No leader yet (an election), or managers naming
                        // each other (a lease changing hands): a pause.
                        let now = rt.now().min(deadline);
                        rt.sleep(config.retry_backoff.min(deadline - now)).await;
                    }
                }
                Ok(reply) => return Ok((addr, reply)),
                Err(ClientError::Unavailable(why)) if config.managers.len() > 1 => {
                    last = why;
                    self.next_manager(addr, None);
                    // A refused connection fails at once: no busy loop.
                    let now = rt.now().min(deadline);
                    rt.sleep(config.retry_backoff.min(deadline - now)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After `failed` did not serve a request: ask `hint` next (the leader it
    /// named), else the next manager in the list.
    fn next_manager(&self, failed: SocketAddr, hint: Option<SocketAddr>) {
        let managers = &self.inner.config.managers;
        let next = hint.filter(|&h| h != failed).unwrap_or_else(|| {
            // After the listed manager asked last (the failed one, or the
            // one before a redirect to an address the list lacks).
            let i = managers
                .iter()
                .position(|&m| m == failed)
                .unwrap_or(self.inner.listed.load(Ordering::Relaxed) as usize);
            let i = (i + 1) % managers.len();
            self.inner.listed.store(i as u64, Ordering::Relaxed);
            managers[i]
        });
        *self.inner.manager.lock().unwrap() = next;
    }

    /// Asks the server at `addr`, which should lead `partition`, to hand
    /// its leadership to server `to` (`admin transfer-leader`). `Ok`: the
    /// server started the transfer (it completes within an election
    /// timeout, unless `to` is down); `Err(Rejected)`: why it would not;
    /// `Err(Unavailable)`: no answer (the transfer may still have started).
    pub async fn transfer_leader(
        &self,
        addr: SocketAddr,
        partition: PartitionId,
        to: NodeId,
    ) -> Result<String, ClientError> {
        let wait = self.inner.config.attempt_timeout;
        let build = |req| Msg::TransferLeader { req, partition, to };
        match self.ask(addr, "server", build, wait).await? {
            Msg::AdminReply { result, .. } => result.map_err(ClientError::Rejected),
            other => Err(unexpected(&format!("server {addr}"), &other)),
        }
    }

    /// Asks the server at `addr`, which should lead `partition`, to split it
    /// at key number `at` (`None`: its middle key) through its log (`admin
    /// split`). `Ok`: the split applied (the text names the new
    /// partition); `Err(Rejected)`: why not; `Err(Unavailable)`: no answer
    /// in time (it may still apply).
    pub async fn split_partition(
        &self,
        addr: SocketAddr,
        partition: PartitionId,
        at: Option<u64>,
    ) -> Result<String, ClientError> {
        let wait = self.inner.config.command_timeout;
        let build = |req| Msg::SplitPartition { req, partition, at };
        match self.ask(addr, "server", build, wait).await? {
            Msg::AdminReply { result, .. } => result.map_err(ClientError::Rejected),
            other => Err(unexpected(&format!("server {addr}"), &other)),
        }
    }

    /// Asks the manager to drain, stop draining or remove server `node`
    /// (`admin drain / undrain / remove-server`). `Ok`: what the manager
    /// does; `Err(Rejected)`: why it would not.
    pub async fn server_admin(
        &self,
        node: NodeId,
        action: crate::wire::ServerAction,
    ) -> Result<String, ClientError> {
        let build = |req| Msg::ServerAdmin { req, node, action };
        match self.ask_manager(build).await? {
            (_, Msg::AdminReply { result, .. }) => result.map_err(ClientError::Rejected),
            (addr, other) => Err(unexpected(&format!("the manager at {addr}"), &other)),
        }
    }

    /// One request and its reply, for the admin calls (no retries: the
    /// operator sees what happened). `who` names the peer in errors.
    async fn ask(
        &self,
        addr: SocketAddr,
        who: &str,
        build: impl FnOnce(u64) -> Msg,
        wait: Duration,
    ) -> Result<Msg, ClientError> {
        match self.call(addr, build, wait).await {
            Ok(Answer::Reply(msg)) => Ok(msg),
            Ok(Answer::NoReply) => Err(ClientError::Unavailable(format!(
                "{who} at {addr} did not answer within {wait:?}"
            ))),
            Ok(Answer::Undelivered) => Err(ClientError::Unavailable(format!(
                "{who} at {addr} is unreachable"
            ))),
            Err(e) => Err(ClientError::Unavailable(e)),
        }
    }

    /// A page of the copy that the committed EXPORT attempt `txn` (see
    /// [`Session::last_txn`]) left in `partition`: its rows with key
    /// numbers in `[from, to]`, ascending, up to about `max_bytes`. Every
    /// replica that applied the prepare holds the same copy: the leader is
    /// asked first, then the others in turn, until `deadline`.
    pub async fn export_page(
        &self,
        partition: PartitionId,
        txn: TxnId,
        from: u64,
        to: u64,
        max_bytes: u32,
        deadline: Instant,
    ) -> Result<crate::kv::ExportPage, ClientError> {
        let rt = &self.inner.rt;
        let mut last_error = String::from("deadline passed before the first attempt");
        let mut attempt = 0usize;
        while rt.now() < deadline {
            let map = self.map();
            let Some(p) = map.partitions.get(&partition) else {
                return Err(ClientError::Unavailable(format!(
                    "partition {partition} is not in the map any more"
                )));
            };
            let replicas = p.replicas.len().max(1);
            let node = match attempt {
                0 => self.target(&map, partition, 0),
                n => p.replicas.get(n % replicas).copied(),
            };
            let Some(addr) = node.and_then(|n| map.servers.get(&n).copied()) else {
                return Err(ClientError::Unavailable(format!(
                    "partition {partition} has no replica with an address in the map"
                )));
            };
            let wait = self
                .inner
                .config
                .attempt_timeout
                .min(deadline.saturating_duration_since(rt.now()));
            let build = |req| Msg::ExportRead {
                req,
                partition,
                txn,
                from,
                to,
                max_bytes,
                release: false,
            };
            match self.call(addr, build, wait).await {
                Ok(Answer::Reply(Msg::ExportReply {
                    result: Ok(page), ..
                })) => return Ok(page),
                Ok(Answer::Reply(Msg::ExportReply { result: Err(e), .. })) => {
                    last_error = e.to_string()
                }
                Ok(Answer::Reply(other)) => {
                    return Err(unexpected(&format!("server {addr}"), &other))
                }
                Ok(Answer::NoReply) => {
                    last_error = format!("server {addr} did not answer in {wait:?}")
                }
                Ok(Answer::Undelivered) => last_error = format!("server {addr} is unreachable"),
                Err(e) => return Err(ClientError::Unavailable(e)),
            }
            attempt += 1;
            if attempt % replicas == 0 {
                rt.sleep(self.inner.config.retry_backoff).await;
            }
        }
        Err(ClientError::Unavailable(format!(
            "no page of partition {partition}'s export: {last_error}"
        )))
    }

    /// Keeps (`release` false) or drops (`release` true) the copies that
    /// EXPORT attempt `txn` left on every replica of `partition`: a copy
    /// goes after a session TTL of log time without a read on its replica,
    /// so a long backup touches the ones it has not read yet, and a
    /// finished one lets them go. Best effort: a replica that does not
    /// answer within `wait` is skipped.
    pub async fn export_touch(
        &self,
        partition: PartitionId,
        txn: TxnId,
        release: bool,
        wait: Duration,
    ) {
        let map = self.map();
        let mut asks = Vec::new();
        for node in map.hosts(partition) {
            if let Some(&addr) = map.servers.get(&node) {
                let build = move |req| Msg::ExportRead {
                    req,
                    partition,
                    txn,
                    from: 1,
                    to: 0,
                    max_bytes: 1,
                    release,
                };
                asks.push(self.call(addr, build, wait));
            }
        }
        join_all(asks).await;
    }

    /// Checks a command without running it: limits, operation arguments, and
    /// that every table exists.
    pub fn check(&self, ops: &[Op]) -> Result<(), ClientError> {
        validate_command(ops).map_err(|(index, error)| ClientError::Invalid { index, error })?;
        let map = self.map();
        for (i, op) in ops.iter().enumerate() {
            if !map.tables.contains_key(op.table()) {
                return Err(ClientError::Invalid {
                    index: Some(i),
                    error: OpError::UnknownTable(op.table().to_string()),
                });
            }
        }
        Ok(())
    }

    /// Sends `build(req)` to `to` and waits up to `wait` for the reply.
    /// `Err`: the request could not be encoded (too large), so it was
    /// certainly not sent.
    async fn call(
        &self,
        to: SocketAddr,
        build: impl FnOnce(u64) -> Msg,
        wait: Duration,
    ) -> Result<Answer, String> {
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let bytes = encode_msg(&build(req)).map_err(|e| format!("request not sent: {e}"))?;
        let (tx, mut rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(req, tx);
        let mut undelivered = self.inner.net.send_tracked(to, bytes);
        let answer = async {
            let mut tracking = true;
            loop {
                tokio::select! {
                    biased;
                    reply = &mut rx => {
                        return reply.map_or(Answer::NoReply, Answer::Reply);
                    }
                    dropped = &mut undelivered, if tracking => match dropped {
                        Ok(()) => return Answer::Undelivered,
                        Err(_) => tracking = false, // it may have arrived
                    },
                }
            }
        };
        let answer = timeout(&self.inner.rt, wait, answer)
            .await
            .unwrap_or(Answer::NoReply);
        self.inner.pending.lock().unwrap().remove(&req);
        Ok(answer)
    }

    /// Fetches the map from the manager; keeps the newest one seen. While
    /// the manager is down, attempts start at least [`retry_pause`] apart
    /// (exponential backoff with jitter), so a refused connection, which
    /// fails at once, is not retried in a busy loop.
    pub async fn refresh_map(&self, deadline: Instant) -> Result<Arc<PartitionMap>, ClientError> {
        let config = &self.inner.config;
        if config.fixed_map.is_some() {
            return Ok(self.map());
        }
        let rt = &self.inner.rt;
        let mut failures = 0u32;
        let mut redirected = false;
        loop {
            let now = rt.now();
            let manager = *self.inner.manager.lock().unwrap();
            if now >= deadline {
                let managers: Vec<String> = config.managers.iter().map(|a| a.to_string()).collect();
                return Err(ClientError::Unavailable(format!(
                    "no partition map from the manager at {}",
                    managers.join(",")
                )));
            }
            let wait = config.attempt_timeout.min(deadline - now);
            let held = self.map_epoch();
            let get = |req| Msg::GetMap { req, epoch: held };
            let answer = self.call(manager, get, wait).await;
            if let Ok(Answer::Reply(Msg::NotManagerLeader { leader, .. })) = answer {
                self.next_manager(manager, leader);
                if leader.is_some() && !std::mem::replace(&mut redirected, true) {
                    continue; // at once (once: two managers may name each other)
                }
            } else if !matches!(answer, Ok(Answer::Reply(Msg::MapReply { .. }))) {
                self.next_manager(manager, None);
            }
            if let Ok(Answer::Reply(Msg::MapReply { map, .. })) = answer {
                match map.validate() {
                    Err(e) => {
                        tracing::warn!("ignoring an invalid partition map from {manager}: {e}")
                    }
                    Ok(()) => {
                        let mut slot = self.inner.map.lock().unwrap();
                        tracing::debug!(
                            epoch = map.epoch,
                            held = slot.as_ref().map_or(0, |m| m.epoch),
                            partitions = map.partitions.len(),
                            "partition map from the manager"
                        );
                        if slot.as_ref().is_none_or(|m| m.epoch <= map.epoch) {
                            *slot = Some(Arc::new(map));
                        }
                        return Ok(slot.clone().unwrap());
                    }
                }
            }
            // Attempts start at least a backoff pause apart: an attempt that
            // waited out its timeout needs no more, one that failed at once
            // (connection refused) waits the rest.
            let (base, max) = (config.retry_backoff, config.retry_backoff_max);
            let taken = rt.now() - now;
            if taken < backoff_nominal(base, max, failures) {
                let pause = retry_pause(base, max, failures, rt.rand_u64());
                let rest = pause.saturating_sub(taken);
                let after = rt.now();
                if !rest.is_zero() && after < deadline {
                    rt.sleep(rest.min(deadline - after)).await;
                }
            }
            failures = failures.saturating_add(1);
        }
    }

    /// The replica to try for `partition`: the cached leader if the map
    /// knows where it is, and lists it as a replica or predates it (a
    /// leader the map does not list is one added since the map was
    /// fetched; one a newer map no longer lists was moved away, e.g. off a
    /// server lost for good, which would not answer), else the
    /// `attempt`-th replica in map order.
    fn target(&self, map: &PartitionMap, partition: PartitionId, attempt: usize) -> Option<NodeId> {
        let p = map.partitions.get(&partition)?;
        let cached = self.inner.leaders.lock().unwrap().get(&partition).copied();
        match cached {
            Some((leader, epoch))
                if map.servers.contains_key(&leader)
                    && (epoch >= map.epoch || map.hosts(partition).any(|n| n == leader)) =>
            {
                Some(leader)
            }
            _ => Some(p.replicas[attempt % p.replicas.len()]),
        }
    }

    /// True with probability `p`; draws nothing when `p` is 0 (so the
    /// simulation's schedule does not change with the faults off).
    fn chance(&self, p: f64) -> bool {
        p > 0.0 && ((self.inner.rt.rand_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Whether this transaction attempt's coordinator crashes, and where
    /// (simulated, see [`faults`]; never in production).
    fn draw_crash(&self) -> Option<Crash> {
        if !self.chance(faults::rate()) {
            return None;
        }
        crate::stats::count(crate::stats::Event::CoordinatorCrash);
        Some(match self.inner.rt.rand_u64() % 3 {
            0 => Crash::WhilePreparing,
            1 => Crash::BeforeResolving,
            _ => Crash::WhileResolving,
        })
    }

    /// Sends `op` once to the partition's presumed leader, without waiting
    /// for (or retrying on) an answer.
    fn send_once(&self, partition: PartitionId, op: TxnOp) {
        let map = self.map();
        let Some(addr) = self
            .target(&map, partition, 0)
            .and_then(|node| map.servers.get(&node).copied())
        else {
            return;
        };
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        if let Ok(bytes) = encode_msg(&Msg::Txn { req, partition, op }) {
            self.inner.net.send(addr, bytes);
        }
    }

    /// Simulated late duplicates (see [`faults`]): a copy of a prepare that
    /// reached its partition (or may have) arrives again up to 3 s later,
    /// when the attempt may long be decided and resolved. (A prepare that
    /// certainly never arrived has no copy in flight in a real network.)
    fn send_late_copies(
        &self,
        prepares: &BTreeMap<PartitionId, Prepare>,
        votes: &[(PartitionId, PartOutcome)],
    ) {
        let rate = faults::rate();
        for (p, vote) in votes {
            if !matches!(vote, PartOutcome::Done(_) | PartOutcome::Unknown(_)) || !self.chance(rate)
            {
                continue;
            }
            crate::stats::count(crate::stats::Event::LatePrepare);
            let (client, p, prepare) = (self.clone(), *p, prepares[p].clone());
            let delay = Duration::from_millis(self.inner.rt.rand_u64() % 3000);
            self.inner.rt.spawn(async move {
                client.inner.rt.sleep(delay).await;
                client.send_once(p, TxnOp::Prepare(prepare));
            });
        }
    }

    /// The epoch of the map held (0: none yet).
    fn map_epoch(&self) -> u64 {
        let map = self.inner.map.lock().unwrap();
        map.as_ref().map_or(0, |m| m.epoch)
    }

    /// Remembers (or forgets, with `None`) who leads `partition`.
    fn set_leader(&self, partition: PartitionId, leader: Option<NodeId>) {
        let epoch = self.map_epoch();
        let mut leaders = self.inner.leaders.lock().unwrap();
        match leader {
            Some(l) => leaders.insert(partition, (l, epoch)),
            None => leaders.remove(&partition),
        };
    }

    /// Queues decisions for `partition` (already counted in `resolving`),
    /// and makes sure they are sent soon.
    fn queue_decisions(&self, partition: PartitionId, decisions: Vec<Resolution>) {
        let start = {
            let mut all = self.inner.decisions.lock().unwrap();
            let d = all.entry(partition).or_default();
            d.queued.extend(decisions);
            !std::mem::replace(&mut d.flushing, true)
        };
        if start {
            let client = self.clone();
            self.inner
                .rt
                .spawn(async move { client.flush_decisions(partition).await });
        }
    }

    /// Takes (some of) the decisions waiting for `partition`, for a request
    /// about to go there; the caller accounts for them.
    fn take_decisions(&self, partition: PartitionId) -> Vec<Resolution> {
        let mut all = self.inner.decisions.lock().unwrap();
        match all.get_mut(&partition) {
            Some(d) if d.queued.len() > DECISIONS_MAX => d.queued.drain(..DECISIONS_MAX).collect(),
            Some(d) => std::mem::take(&mut d.queued),
            None => Vec::new(),
        }
    }

    /// Sends the decisions for `partition` that no prepare took within
    /// [`DECISION_DELAY`], in requests of their own, until none wait.
    async fn flush_decisions(&self, partition: PartitionId) {
        let rt = &self.inner.rt;
        loop {
            rt.sleep(DECISION_DELAY).await;
            let decisions = {
                let mut all = self.inner.decisions.lock().unwrap();
                let d = all.entry(partition).or_default();
                if d.queued.is_empty() {
                    d.flushing = false;
                    return;
                }
                let n = d.queued.len().min(DECISIONS_MAX);
                d.queued.drain(..n).collect::<Vec<_>>()
            };
            let n = decisions.len() as u64;
            let id = CommandId {
                session: 0,
                seq: 0,
                sent_ms: 0,
            };
            let request = PartRequest::Txn(TxnOp::Batch {
                decisions,
                prepare: None,
            });
            let deadline = rt.now() + self.inner.config.command_timeout;
            // Best effort: recovery resolves whatever this misses.
            let _ = self.run_part(id, partition, request, deadline).await;
            self.inner.resolving.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Runs one partition's part of a command until it has an answer or the
    /// deadline passes. Requests go to the partition's leader: a follower
    /// answers `NotLeader` with a hint, which is followed; with no hint (an
    /// election is under way) the replicas are tried in turn, with a backoff
    /// after each full round.
    async fn run_part(
        &self,
        id: CommandId,
        partition: PartitionId,
        request: PartRequest,
        deadline: Instant,
    ) -> PartOutcome {
        // A transaction step always matters (a prepare takes locks).
        let (has_writes, op_count) = match &request {
            PartRequest::Execute(ops) => (ops.iter().any(Op::is_write), ops.len()),
            PartRequest::Txn(_) => (true, 0),
        };
        let mut maybe_applied = false;
        // The last map that had this partition.
        let mut known: Option<Arc<PartitionMap>> = None;
        let mut last_error = String::from("deadline passed before the first attempt");
        // Counts replicas tried without finding a leader (rotation).
        let mut attempt = 0usize;
        loop {
            let now = self.inner.rt.now();
            if now >= deadline {
                break;
            }
            let mut map = self.map();
            if map.partitions.contains_key(&partition) {
                known = Some(map.clone());
            } else if let Some(earlier) = &known {
                // A restarted manager that has not relearned a split yet
                // serves a map without this partition: keep to the one we
                // routed by (the partition's replicas answer, or refuse).
                map = earlier.clone();
            }
            let Some(node) = self.target(&map, partition, attempt) else {
                let why = format!("partition {partition} is not in the map");
                return if maybe_applied {
                    PartOutcome::Unknown(why)
                } else {
                    PartOutcome::NotApplied(why)
                };
            };
            let Some(addr) = map.servers.get(&node).copied() else {
                return PartOutcome::NotApplied(format!(
                    "server {node} of partition {partition} has no address in the map"
                ));
            };
            let replica_count = map
                .partitions
                .get(&partition)
                .map_or(1, |p| p.replicas.len());
            let wait = self.inner.config.attempt_timeout.min(deadline - now);
            let request = request.clone();
            let reply = self
                .call(
                    addr,
                    |req| match request {
                        PartRequest::Execute(ops) => Msg::Execute {
                            req,
                            session: id.session,
                            seq: id.seq,
                            sent_ms: id.sent_ms,
                            partition,
                            ops,
                        },
                        PartRequest::Txn(op) => Msg::Txn { req, partition, op },
                    },
                    wait,
                )
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) if maybe_applied => return PartOutcome::Unknown(e),
                Err(e) => return PartOutcome::Rejected(e),
            };
            tracing::debug!(
                session = id.session,
                seq = id.seq,
                partition,
                node,
                answer = match &reply {
                    Answer::Reply(Msg::ExecuteReply { result: Err(e), .. })
                    | Answer::Reply(Msg::TxnReply { result: Err(e), .. }) => e.to_string(),
                    Answer::Reply(_) => "ok".to_string(),
                    Answer::NoReply => format!("no reply within {wait:?}"),
                    Answer::Undelivered => "undelivered".to_string(),
                },
                "attempt"
            );
            // Try another replica next, pausing after a full round.
            let rotate = |attempt: &mut usize| {
                *attempt += 1;
                *attempt % replica_count == 0
            };
            let reply = match reply {
                Answer::Reply(Msg::TxnReply {
                    result: Ok(state), ..
                }) => {
                    self.set_leader(partition, Some(node));
                    return PartOutcome::Done(PartReply::Txn(state));
                }
                // Errors mean the same for both kinds of request.
                Answer::Reply(Msg::TxnReply {
                    req,
                    result: Err(e),
                }) => Some(Msg::ExecuteReply {
                    req,
                    result: Err(e),
                }),
                Answer::Reply(msg) => Some(msg),
                Answer::NoReply => None,
                Answer::Undelivered => {
                    // Certainly not applied by this attempt.
                    last_error =
                        format!("server {node} ({addr}) of partition {partition} is unreachable");
                    self.set_leader(partition, None);
                    if rotate(&mut attempt) {
                        self.inner.rt.sleep(self.inner.config.retry_backoff).await;
                    }
                    continue;
                }
            };
            match reply {
                Some(Msg::ExecuteReply {
                    result: Ok(results),
                    ..
                }) => {
                    if results.len() != op_count {
                        return PartOutcome::Unknown(format!(
                            "server {addr} returned {} results for {op_count} operations",
                            results.len()
                        ));
                    }
                    self.set_leader(partition, Some(node));
                    return PartOutcome::Done(PartReply::Results(results));
                }
                Some(Msg::ExecuteReply {
                    result: Err(ExecError::Rejected(ApplyError::CheckFailed { op, key, actual })),
                    ..
                }) if op < op_count => return PartOutcome::CheckFailed { op, key, actual },
                Some(Msg::ExecuteReply {
                    result: Err(ExecError::Rejected(e @ ApplyError::WrongPartition { .. })),
                    ..
                }) => return PartOutcome::Moved(e.to_string()),
                Some(Msg::ExecuteReply {
                    result: Err(ExecError::Rejected(e)),
                    ..
                }) => return PartOutcome::Rejected(e.to_string()),
                Some(Msg::ExecuteReply {
                    result: Err(e @ ExecError::Stale(_)),
                    ..
                }) => return PartOutcome::Unknown(e.to_string()),
                // A decision for an attempt the partition forgot (applied,
                // and final: asking again changes nothing).
                Some(Msg::ExecuteReply {
                    result: Err(e @ ExecError::TxnForgotten { .. }),
                    ..
                }) => return PartOutcome::Rejected(e.to_string()),
                // Refused now (it came more than half a session TTL after it
                // was first sent to a partition that forgot the session):
                // only an earlier attempt may have applied it.
                Some(Msg::ExecuteReply {
                    result: Err(e @ ExecError::SessionExpired(_)),
                    ..
                }) if maybe_applied => return PartOutcome::Unknown(e.to_string()),
                Some(Msg::ExecuteReply {
                    result: Err(e @ ExecError::SessionExpired(_)),
                    ..
                }) => return PartOutcome::Rejected(e.to_string()),
                Some(Msg::ExecuteReply {
                    result:
                        Err(
                            ref e @ (ExecError::NotLeader { leader, .. }
                            | ExecError::LeaderChanged { leader, .. }),
                        ),
                    ..
                }) => {
                    last_error = e.to_string();
                    if matches!(e, ExecError::LeaderChanged { .. }) {
                        // Proposed but not known to be committed.
                        maybe_applied = true;
                    }
                    match leader.filter(|&l| l != node) {
                        Some(l) if map.servers.contains_key(&l) => {
                            self.set_leader(partition, Some(l))
                        }
                        Some(l) => {
                            // A server our map does not know (it joined
                            // since): a newer map has its address.
                            self.set_leader(partition, Some(l));
                            let _ = timeout(
                                &self.inner.rt,
                                self.inner.config.attempt_timeout,
                                self.refresh_map(deadline),
                            )
                            .await;
                            rotate(&mut attempt);
                        }
                        None => {
                            self.set_leader(partition, None);
                            if rotate(&mut attempt) {
                                self.inner.rt.sleep(self.inner.config.retry_backoff).await;
                            }
                        }
                    }
                }
                Some(Msg::ExecuteReply { result: Err(e), .. }) => {
                    // WrongPartition / NotReady: certainly not applied.
                    last_error = e.to_string();
                    if matches!(e, ExecError::WrongPartition { .. }) {
                        let _ = self.refresh_map(deadline).await;
                    }
                    self.set_leader(partition, None);
                    rotate(&mut attempt);
                    self.inner.rt.sleep(self.inner.config.retry_backoff).await;
                }
                Some(other) => {
                    last_error = format!("unexpected reply {other:?}");
                    maybe_applied = true;
                }
                None => {
                    last_error =
                        format!("no reply from server {node} ({addr}) for partition {partition}");
                    maybe_applied = true;
                    // It may be down: try the next replica. The map may also
                    // have changed (a server moved or restarted).
                    self.set_leader(partition, None);
                    rotate(&mut attempt);
                    let _ = timeout(
                        &self.inner.rt,
                        self.inner.config.attempt_timeout,
                        self.refresh_map(deadline),
                    )
                    .await;
                }
            }
        }
        let why =
            format!("no leader of partition {partition} answered in time (last: {last_error})");
        if has_writes && maybe_applied {
            PartOutcome::Unknown(why)
        } else {
            PartOutcome::NotApplied(why)
        }
    }
}

impl<R: Runtime> Session<R> {
    pub fn client(&self) -> &Client<R> {
        &self.client
    }

    /// The attempt of this session's last command that committed as a
    /// transaction, if its last command did: with the session's id and the
    /// command's number, it names the copies an EXPORT command left
    /// ([`Client::export_page`]). Only that attempt's copies are the data
    /// at the commit point (an aborted attempt's may linger on a replica
    /// that has not applied the rest of its log yet).
    pub fn last_txn(&self) -> Option<TxnId> {
        self.last_commit
            .as_ref()
            .map(|(txn, _)| *txn)
            .filter(|txn| txn.session == self.id && txn.seq == self.seq)
    }

    /// Runs `ops` as one command and returns one result per operation, in
    /// operation order.
    ///
    /// A partition that split since the map was fetched refuses the parts
    /// that reach past its range (not applied, and never applied there
    /// later: its session table records the refusal); the command is then
    /// routed again by a newer map, with the same number, so it still runs
    /// at most once (ARCHITECTURE.md, "Range splits").
    pub async fn execute(&mut self, ops: Vec<Op>) -> Result<Vec<OpResult>, ClientError> {
        let client = self.client.clone();
        client.check(&ops)?;
        self.seq += 1;
        let seq = self.seq;
        let deadline = client.inner.rt.now() + client.inner.config.command_timeout;
        // Every attempt of every part carries the time of the first: a
        // partition that forgot the session refuses the command if that is
        // long past (it may have run it before the session expired).
        let id = CommandId {
            session: self.id,
            seq,
            sent_ms: client.inner.rt.unix_time_ms(),
        };
        // Transaction attempts go on counting across re-routings.
        let mut attempt = 0u32;
        loop {
            let map = client.map();
            let route = Route::new(&map, &ops)?;
            // An EXPORT's copies are taken by prepares, even in one partition.
            let routed = if route.parts.len() == 1 && !ops.iter().any(Op::is_export) {
                self.run_single(&route, id, deadline).await
            } else {
                let previous = self.last_commit.take();
                let routed = self
                    .run_txn(&ops, &route, id, deadline, previous.as_ref(), &mut attempt)
                    .await;
                match &routed {
                    Routed::Done(Ok((_, txn))) => {
                        self.last_commit = Some((*txn, route.parts.keys().copied().collect()));
                    }
                    // Carry the earlier decision on: it was not delivered by this.
                    _ => self.last_commit = previous,
                }
                match routed {
                    Routed::Done(result) => Routed::Done(result.map(|(results, _)| results)),
                    Routed::Moved(why) => Routed::Moved(why),
                }
            };
            match routed {
                Routed::Done(result) => return result,
                Routed::Moved(why) => {
                    let rt = &client.inner.rt;
                    let pause = client.inner.config.retry_backoff;
                    if rt.now() + pause >= deadline {
                        return Err(ClientError::Unavailable(format!(
                            "{why}; no newer partition map came before the deadline"
                        )));
                    }
                    rt.sleep(pause).await;
                    let _ = client.refresh_map(deadline).await;
                }
            }
        }
    }

    /// Runs a command whose operations all fall in one partition.
    async fn run_single(
        &self,
        route: &Route,
        id: CommandId,
        deadline: Instant,
    ) -> Routed<Vec<OpResult>> {
        let client = &self.client;
        let (&partition, ops) = route.ops.iter().next().expect("one part");
        let indices = &route.parts[&partition];
        let request = PartRequest::Execute(ops.clone());
        Routed::Done(
            match client.run_part(id, partition, request, deadline).await {
                PartOutcome::Done(PartReply::Results(results)) => Ok(results),
                PartOutcome::Done(PartReply::Txn(_)) => Err(ClientError::UnknownOutcome(
                    "a transaction reply to a command".into(),
                )),
                PartOutcome::CheckFailed { op, key, actual } => Err(ClientError::CheckFailed {
                    index: indices[op],
                    key,
                    actual,
                }),
                PartOutcome::Moved(why) => return Routed::Moved(why),
                PartOutcome::Rejected(e) => Err(ClientError::Rejected(e)),
                PartOutcome::NotApplied(e) => Err(ClientError::Unavailable(e)),
                PartOutcome::Unknown(e) => Err(ClientError::UnknownOutcome(e)),
            },
        )
    }

    /// Runs a command that spans partitions as one transaction
    /// (docs/transactions.md): prepare every part in parallel (locks taken,
    /// results computed); if all prepared, it committed at that moment:
    /// answer, and send the decision to the participants in the
    /// background. A conflict aborts the attempt, which is retried as a new
    /// attempt of the same age (wait-die), so the user never sees it.
    ///
    /// Returns the results and the committed attempt. `previous`: the
    /// session's last committed transaction, whose decision the prepares
    /// carry (see [`Session::last_commit`]).
    async fn run_txn(
        &self,
        ops: &[Op],
        route: &Route,
        id: CommandId,
        deadline: Instant,
        previous: Option<&(TxnId, Vec<PartitionId>)>,
        attempt_ref: &mut u32,
    ) -> Routed<(Vec<OpResult>, TxnId)> {
        let client = &self.client;
        let rt = &client.inner.rt;
        let (touched, parts) = (&route.touched, &route.parts);
        let participants: Vec<PartitionId> = parts.keys().copied().collect();
        loop {
            let attempt = *attempt_ref;
            let txn = TxnId {
                session: id.session,
                seq: id.seq,
                attempt,
            };
            let sent_ms = if attempt == 0 {
                id.sent_ms
            } else {
                rt.unix_time_ms()
            };
            let prepares: BTreeMap<PartitionId, Prepare> = route
                .ops
                .iter()
                .map(|(&p, part_ops)| {
                    let prepare = Prepare {
                        id: txn,
                        priority_ms: id.sent_ms,
                        sent_ms,
                        participants: participants.clone(),
                        ops: part_ops.clone(),
                        committed_before: previous
                            .filter(|(_, ps)| ps.contains(&p))
                            .map(|(t, _)| *t),
                    };
                    (p, prepare)
                })
                .collect();
            let crash = self.client.draw_crash();
            if crash == Some(Crash::WhilePreparing) {
                // Some prepares leave (once each), then nothing more.
                for (&p, prepare) in &prepares {
                    if self.client.chance(0.5) {
                        self.client.send_once(p, TxnOp::Prepare(prepare.clone()));
                    }
                }
                return Routed::Done(Err(crash_error(txn, "while sending its prepares")));
            }
            let mut carried: Vec<(PartitionId, Vec<Resolution>)> = Vec::new();
            let requests = prepares
                .iter()
                .map(|(&p, prepare)| {
                    let prepare = prepare.clone();
                    // Decisions waiting for this partition go with it. (Were
                    // this command's future dropped before the answers,
                    // they would be lost: recovery resolves those.)
                    let decisions = client.take_decisions(p);
                    if decisions.is_empty() {
                        return (p, PartRequest::Txn(TxnOp::Prepare(prepare)));
                    }
                    carried.push((p, decisions.clone()));
                    let op = TxnOp::Batch {
                        decisions,
                        prepare: Some(prepare),
                    };
                    (p, PartRequest::Txn(op))
                })
                .collect();
            let votes = self.run_parts(requests, id, deadline).await;
            self.client.send_late_copies(&prepares, &votes);
            for (p, decisions) in carried {
                // Applied with the prepare if it was answered; otherwise
                // they wait for the next request again.
                let delivered = votes
                    .iter()
                    .any(|(q, vote)| *q == p && matches!(vote, PartOutcome::Done(_)));
                if delivered {
                    let n = decisions.len() as u64;
                    client.inner.resolving.fetch_sub(n, Ordering::AcqRel);
                } else {
                    client.queue_decisions(p, decisions);
                }
            }
            let mut done: BTreeMap<PartitionId, Vec<OpResult>> = BTreeMap::new();
            let mut aborted: Option<AbortReason> = None;
            // The failed CHECK with the lowest operation index, if any.
            let mut check_failed: Option<ClientError> = None;
            // A participant that split since our map: not prepared there.
            let mut moved: Option<String> = None;
            let (mut not_applied, mut unknown) = (vec![], vec![]);
            for (p, vote) in votes {
                match vote {
                    PartOutcome::Done(PartReply::Txn(TxnState::Aborted(
                        AbortReason::Rejected(e @ ApplyError::WrongPartition { .. }),
                    ))) => {
                        moved = Some(e.to_string());
                        aborted.get_or_insert(AbortReason::Aborted);
                    }
                    PartOutcome::Moved(e) => {
                        moved = Some(e);
                        aborted.get_or_insert(AbortReason::Aborted);
                    }
                    PartOutcome::Done(PartReply::Txn(
                        TxnState::Prepared { results } | TxnState::Committed { results },
                    )) if results.len() == parts[&p].len() => {
                        done.insert(p, results);
                    }
                    PartOutcome::Done(PartReply::Txn(
                        TxnState::Prepared { .. } | TxnState::Committed { .. },
                    )) => unknown.push(format!(
                        "partition {p} answered with results for another number of operations"
                    )),
                    PartOutcome::Done(PartReply::Txn(TxnState::Aborted(
                        AbortReason::Rejected(ApplyError::CheckFailed { op, key, actual }),
                    ))) if op < parts[&p].len() => {
                        let index = parts[&p][op];
                        if !matches!(&check_failed, Some(ClientError::CheckFailed { index: first, .. }) if *first < index)
                        {
                            check_failed = Some(ClientError::CheckFailed { index, key, actual });
                        }
                        aborted = Some(AbortReason::Rejected(ApplyError::Invalid(
                            "check failed".into(),
                        )));
                    }
                    PartOutcome::Done(PartReply::Txn(TxnState::Aborted(AbortReason::Conflict)))
                        if crate::bug!(TxnCommitWithoutAllPrepares) =>
                    {
                        // Injected bug: a participant that refused counts
                        // as prepared (its results: as if it read nothing).
                        let results = parts[&p].iter().map(|&i| blank_result(&ops[i])).collect();
                        done.insert(p, results);
                    }
                    PartOutcome::Done(PartReply::Txn(TxnState::Aborted(reason))) => {
                        // A refusal outranks a conflict: it is final.
                        if !matches!(aborted, Some(AbortReason::Rejected(_))) {
                            aborted = Some(reason);
                        }
                    }
                    PartOutcome::Done(PartReply::Results(_)) => {
                        unknown.push(format!("partition {p} answered a prepare with results"))
                    }
                    PartOutcome::CheckFailed { .. } => {
                        unknown.push(format!("partition {p} answered a prepare as a command"))
                    }
                    PartOutcome::Rejected(e) | PartOutcome::NotApplied(e) => not_applied.push(e),
                    PartOutcome::Unknown(e) => unknown.push(e),
                }
            }
            let decided = aborted.is_some() || (not_applied.is_empty() && unknown.is_empty());
            if decided && crash.is_some() {
                // Decided, but the coordinator dies before (or while)
                // sending the decision: the participants' recovery must
                // resolve the rest. Its user hears nothing, except for a
                // commit that crashed after replying.
                let reached: Vec<PartitionId> = match crash {
                    Some(Crash::WhileResolving) => participants
                        .iter()
                        .copied()
                        .filter(|_| self.client.chance(0.5))
                        .collect(),
                    _ => Vec::new(),
                };
                let commit = aborted.is_none();
                self.resolve_in_background(txn, &reached, commit);
                if !(commit && crash == Some(Crash::WhileResolving)) {
                    return Routed::Done(Err(crash_error(
                        txn,
                        "before sending its decision to everyone",
                    )));
                }
            }
            if aborted.is_none() && not_applied.is_empty() && unknown.is_empty() {
                // Every participant prepared: committed.
                crate::stats::count(crate::stats::Event::TxnCommitted);
                client.inner.txn_committed.fetch_add(1, Ordering::Relaxed);
                if crash.is_none() {
                    self.resolve_in_background(txn, &participants, true);
                }
                return Routed::Done(Ok((merge(ops, touched, parts, done), txn)));
            }
            if let Some(reason) = aborted {
                // Certainly aborted: release the locks of the parts that
                // prepared, now rather than after recovery's timeout.
                self.resolve_in_background(txn, &participants, false);
                if let Some(why) = moved {
                    // Routed by a map from before a split: run it again as
                    // a new attempt, routed by a newer map.
                    *attempt_ref += 1;
                    return Routed::Moved(why);
                }
                match reason {
                    AbortReason::Rejected(e) => {
                        client.inner.txn_aborted.fetch_add(1, Ordering::Relaxed);
                        return Routed::Done(Err(
                            check_failed.unwrap_or(ClientError::Rejected(e.to_string()))
                        ));
                    }
                    AbortReason::Stale => {
                        return Routed::Done(Err(ClientError::UnknownOutcome(format!(
                            "transaction {txn} was refused as older than a later command of its session"
                        ))))
                    }
                    AbortReason::Conflict
                    | AbortReason::Fenced
                    | AbortReason::Aborted
                    | AbortReason::Expired => {
                        let pause = retry_pause(
                            client.inner.config.retry_backoff / 5,
                            client.inner.config.retry_backoff_max / 4,
                            attempt.min(8),
                            rt.rand_u64(),
                        );
                        let now = rt.now();
                        if now + pause >= deadline {
                            return Routed::Done(Err(ClientError::Unavailable(format!(
                                "transaction {txn} kept conflicting with others until the deadline"
                            ))));
                        }
                        rt.sleep(pause).await;
                        crate::stats::count(crate::stats::Event::TxnRetried);
                        client.inner.txn_retries.fetch_add(1, Ordering::Relaxed);
                        *attempt_ref += 1;
                        continue;
                    }
                }
            }
            // Some part never answered. Nobody may abort now: every part
            // may have prepared, and then it committed. If none of a part's
            // requests can have been proposed it never prepares, so the
            // transaction cannot commit (recovery aborts what did prepare).
            if unknown.is_empty() {
                return Routed::Done(Err(ClientError::Unavailable(not_applied.join("; "))));
            }
            return Routed::Done(Err(ClientError::UnknownOutcome(
                unknown
                    .iter()
                    .chain(&not_applied)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            )));
        }
    }

    /// Sends a transaction's decision to every participant without waiting
    /// (best effort: recovery resolves whatever this misses). Only for a
    /// decided transaction: committed (every part prepared) or aborted
    /// (some part said aborted). The decisions for a partition wait a
    /// moment for the next prepare this client sends there, which carries
    /// them in its entry ([`TxnOp::Batch`]); those still waiting after
    /// [`DECISION_DELAY`] go together in a request of their own.
    fn resolve_in_background(&self, txn: TxnId, participants: &[PartitionId], commit: bool) {
        let client = &self.client;
        client
            .inner
            .resolving
            .fetch_add(participants.len() as u64, Ordering::AcqRel);
        for &p in participants {
            client.queue_decisions(p, vec![Resolution { id: txn, commit }]);
        }
    }

    /// Runs requests on several partitions concurrently (in this task: no
    /// task to spawn per part).
    async fn run_parts(
        &self,
        requests: Vec<(PartitionId, PartRequest)>,
        id: CommandId,
        deadline: Instant,
    ) -> Vec<(PartitionId, PartOutcome)> {
        let parts: Vec<PartitionId> = requests.iter().map(|(p, _)| *p).collect();
        let client = &self.client;
        let outcomes = join_all(
            requests
                .into_iter()
                .map(|(part, request)| client.run_part(id, part, request, deadline))
                .collect(),
        )
        .await;
        parts.into_iter().zip(outcomes).collect()
    }
}

/// Runs futures concurrently in the calling task; their outputs in order.
pub(crate) async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to completion"))
        .collect()
}

/// `base` doubled `failures` times, at most `max`.
fn backoff_nominal(base: Duration, max: Duration, failures: u32) -> Duration {
    base.saturating_mul(1u32 << failures.min(20)).min(max)
}

/// The pause after the `failures`-th consecutive failed attempt (from 0):
/// `base` doubled per failure up to `max`, then a random point in its upper
/// half ("equal jitter"), so clients that lost the same server do not retry
/// in lockstep, yet each waits at least half the nominal pause. `random`
/// comes from the runtime, so the simulator controls it.
pub fn retry_pause(base: Duration, max: Duration, failures: u32, random: u64) -> Duration {
    let nominal = backoff_nominal(base, max, failures);
    let half = nominal / 2;
    let jitter_ns = match half.as_nanos() as u64 {
        0 => 0,
        span => random % (span + 1),
    };
    half + Duration::from_nanos(jitter_ns)
}

/// A result of the right kind for `op` that claims it found nothing (for
/// an injected bug only).
fn blank_result(op: &Op) -> OpResult {
    match op {
        Op::Put { .. } => OpResult::Put { found: false },
        Op::Get { .. } => OpResult::Get(None),
        Op::Swap { .. } => OpResult::Swap(None),
        Op::Delete { .. } => OpResult::Delete { found: false },
        Op::Scan { .. } => OpResult::Scan(Vec::new()),
        Op::Check { .. } => OpResult::Check,
        Op::Export { .. } => OpResult::Export(Vec::new()),
    }
}

/// Puts per-partition results back into operation order, concatenating a
/// multi-partition SCAN's rows in key order.
fn merge(
    ops: &[Op],
    touched: &[Vec<PartitionId>],
    parts: &BTreeMap<PartitionId, Vec<usize>>,
    mut done: BTreeMap<PartitionId, Vec<OpResult>>,
) -> Vec<OpResult> {
    // Results of partition p arrive in the order of parts[p]: index them.
    let mut by_op: BTreeMap<(usize, PartitionId), OpResult> = BTreeMap::new();
    for (id, idx) in parts {
        let results = done.remove(id).unwrap_or_default();
        for (&i, result) in idx.iter().zip(results) {
            by_op.insert((i, *id), result);
        }
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| match op {
            Op::Scan { .. } => {
                let mut rows = Vec::new();
                for id in &touched[i] {
                    if let Some(OpResult::Scan(part_rows)) = by_op.remove(&(i, *id)) {
                        rows.extend(part_rows);
                    }
                }
                OpResult::Scan(rows)
            }
            Op::Export { .. } => {
                let mut parts = Vec::new();
                for id in &touched[i] {
                    if let Some(OpResult::Export(p)) = by_op.remove(&(i, *id)) {
                        parts.extend(p);
                    }
                }
                OpResult::Export(parts)
            }
            _ => by_op
                .remove(&(i, touched[i][0]))
                .expect("every single-partition op has a result"),
        })
        .collect()
}

async fn recv_loop<R: Runtime>(inner: Arc<Inner<R>>) {
    loop {
        let (from, payload) = match inner.net.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("client network endpoint failed: {e}");
                return;
            }
        };
        let msg = match decode_msg(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, "dropping message: {e}");
                continue;
            }
        };
        let req = match &msg {
            Msg::MapReply { req, .. }
            | Msg::ExecuteReply { req, .. }
            | Msg::TxnReply { req, .. }
            | Msg::StatusReply { req, .. }
            | Msg::AdminReply { req, .. }
            | Msg::ExportReply { req, .. }
            | Msg::NotManagerLeader { req, .. } => *req,
            other => {
                tracing::warn!(%from, "client ignores unexpected message {other:?}");
                continue;
            }
        };
        // A reply nobody waits for any more (it timed out) is dropped.
        if let Some(tx) = inner.pending.lock().unwrap().remove(&req) {
            let _ = tx.send(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::tokio_rt::TokioRuntime;
    use std::io;

    #[test]
    fn retry_pauses_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, max) = (Duration::from_millis(50), Duration::from_secs(1));
        let nominal = [50, 100, 200, 400, 800, 1000, 1000];
        for (failures, ms) in nominal.into_iter().enumerate() {
            let nominal = Duration::from_millis(ms);
            let lowest = retry_pause(base, max, failures as u32, 0);
            let highest = retry_pause(base, max, failures as u32, u64::MAX - 1);
            assert_eq!(lowest, nominal / 2, "failure {failures}");
            assert!(highest <= nominal && highest > nominal / 2, "{highest:?}");
        }
        assert_eq!(
            retry_pause(base, max, u32::MAX, 7),
            retry_pause(base, max, 20, 7)
        );
        assert_eq!(retry_pause(Duration::ZERO, max, 3, 7), Duration::ZERO);
    }

    /// A network on which every destination refuses at once, like a host
    /// whose port is closed: every send is reported undelivered right away.
    struct Refused {
        sends: Arc<AtomicU64>,
    }

    impl Net for Refused {
        fn local_addr(&self) -> Option<SocketAddr> {
            None
        }
        fn send(&self, _to: SocketAddr, _payload: Vec<u8>) {
            self.sends.fetch_add(1, Ordering::Relaxed);
        }
        fn send_tracked(&self, to: SocketAddr, payload: Vec<u8>) -> oneshot::Receiver<()> {
            self.send(to, payload);
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(());
            rx
        }
        async fn recv(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
            std::future::pending().await
        }
    }

    /// Tokio's clock, timers and tasks, with the [`Refused`] network.
    #[derive(Clone)]
    struct RefusingRuntime {
        sends: Arc<AtomicU64>,
    }

    impl Runtime for RefusingRuntime {
        type Net = Refused;
        fn now(&self) -> Instant {
            TokioRuntime.now()
        }
        fn unix_time_ms(&self) -> u64 {
            TokioRuntime.unix_time_ms()
        }
        fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send {
            TokioRuntime.sleep(duration)
        }
        fn spawn<F>(&self, fut: F)
        where
            F: std::future::Future<Output = ()> + Send + 'static,
        {
            TokioRuntime.spawn(fut)
        }
        fn rand_u64(&self) -> u64 {
            TokioRuntime.rand_u64()
        }
        async fn bind(
            &self,
            _listen: Option<SocketAddr>,
            _advertise: Option<SocketAddr>,
        ) -> io::Result<Refused> {
            Ok(Refused {
                sends: self.sends.clone(),
            })
        }
    }

    /// Issue 9, item 8: while the manager was down (connection refused at
    /// once), the map refresh loop retried without pausing: a busy loop.
    #[tokio::test]
    async fn the_map_refresh_backs_off_while_the_manager_refuses() {
        let sends = Arc::new(AtomicU64::new(0));
        let rt = RefusingRuntime {
            sends: sends.clone(),
        };
        let mut config = ClientConfig::new("127.0.0.1:9".parse().unwrap());
        config.command_timeout = Duration::from_millis(1500);
        let started = rt.now();
        match Client::connect(rt.clone(), config).await {
            Err(ClientError::Unavailable(e)) => assert!(e.contains("no partition map"), "{e}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("connected to a refusing manager"),
        }
        let elapsed = rt.now() - started;
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(3),
            "gave up after {elapsed:?}"
        );
        // Pauses of 25-50, 50-100, 100-200, 200-400, 400-800, then 500-1000
        // ms: 5 to 7 attempts fit in 1.5 s (a loaded machine may sleep
        // longer). Without backoff, it was a busy loop of thousands.
        let attempts = sends.load(Ordering::Relaxed);
        assert!((4..=8).contains(&attempts), "{attempts} attempts in 1.5 s");
    }
}
