//! The server: hosts partitions and executes commands on them.
//!
//! ```text
//!   start --Register--> manager   (then every heartbeat interval)
//!         <--RegisterReply(map)-- : host the partitions whose leader is us
//!   client --Execute(session, seq, partition, ops)--> ServerCore --> PartitionStore
//!          <--ExecuteReply(results | ExecError)--
//! ```
//! [`ServerCore`] is the pure part (messages in, replies out); [`run_server`]
//! is the thin driver that feeds it from the network. Until replication lands
//! each partition has one serving copy, kept in memory.

use crate::kv::PartitionStore;
use crate::map::{NodeId, Partition, PartitionId, PartitionMap};
use crate::op::{Op, OpResult};
use crate::rt::{Disk, Net, Runtime};
use crate::storage::wal::Lsn;
use crate::storage::{Storage, StorageConfig};
use crate::wire::{decode_msg, encode_msg, ExecError, Msg};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Server configuration; see the `server` binary's `--help` for the flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_id: NodeId,
    /// Where the server listens.
    pub listen_addr: SocketAddr,
    /// The dialable address it tells the manager (never `0.0.0.0`).
    pub advertise_addr: SocketAddr,
    pub manager_addr: SocketAddr,
    /// How often the server re-registers with the manager.
    pub heartbeat_interval: Duration,
    /// Durable storage (`--persistence`); `None` keeps everything in memory.
    pub storage: Option<StorageConfig>,
}

impl ServerConfig {
    pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(1000);
}

/// Most log records appended but not yet durable; past it the server stops
/// reading requests until the disk catches up (backpressure, bounded memory).
const PENDING_RECORDS_MAX: u64 = 64 * 1024;

/// The server's state machine: the map it knows and the partitions it hosts.
pub struct ServerCore {
    node_id: NodeId,
    map: Option<PartitionMap>,
    stores: BTreeMap<PartitionId, PartitionStore>,
}

impl ServerCore {
    pub fn new(node_id: NodeId) -> ServerCore {
        ServerCore::with_stores(node_id, BTreeMap::new())
    }

    /// A core holding partitions recovered from disk.
    pub fn with_stores(
        node_id: NodeId,
        stores: BTreeMap<PartitionId, PartitionStore>,
    ) -> ServerCore {
        ServerCore {
            node_id,
            map: None,
            stores,
        }
    }

    pub fn map(&self) -> Option<&PartitionMap> {
        self.map.as_ref()
    }

    pub fn stores(&self) -> &BTreeMap<PartitionId, PartitionStore> {
        &self.stores
    }

    /// Adopts `map` if it is newer than ours and opens a store for every
    /// partition we now serve. Existing stores keep their data. Returns the
    /// partitions newly hosted (a durable server logs them).
    pub fn install_map(&mut self, map: PartitionMap) -> Vec<Partition> {
        if self.map.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return Vec::new();
        }
        let mut hosted = Vec::new();
        for partition in map.partitions.values() {
            if partition.leader() == self.node_id && !self.stores.contains_key(&partition.id) {
                tracing::info!(
                    node_id = self.node_id,
                    partition = partition.id,
                    table = %partition.table,
                    start = partition.start,
                    end = ?partition.end,
                    "hosting partition"
                );
                self.stores
                    .insert(partition.id, PartitionStore::new(partition.clone()));
                hosted.push(partition.clone());
            }
        }
        self.map = Some(map);
        hosted
    }

    /// Executes a client's command on one of our partitions. The flag says
    /// whether it changed state (and so must be logged before the reply).
    pub fn execute(
        &mut self,
        session: u64,
        seq: u64,
        partition: PartitionId,
        ops: &[Op],
    ) -> (Result<Vec<OpResult>, ExecError>, bool) {
        if self.map.is_none() {
            let not_ready = ExecError::NotReady {
                node_id: self.node_id,
            };
            return (Err(not_ready), false);
        }
        let Some(store) = self.stores.get_mut(&partition) else {
            let wrong = ExecError::WrongPartition {
                node_id: self.node_id,
                partition,
            };
            return (Err(wrong), false);
        };
        match store.execute_once(session, seq, ops) {
            Ok(executed) => (executed.result.map_err(ExecError::from), executed.changed),
            Err(stale) => (Err(stale.into()), false),
        }
    }
}

enum Event {
    Durable(Result<Lsn, String>),
    Received(io::Result<(SocketAddr, Vec<u8>)>),
}

/// Runs a server until its network endpoint or its storage fails, or the
/// manager refuses it. With `config.storage`, the server first recovers its
/// partitions from `disk`, logs every state change, and answers a request
/// only once everything it observed is durable.
pub async fn run_server<R: Runtime, D: Disk>(
    rt: R,
    disk: D,
    config: ServerConfig,
) -> io::Result<()> {
    let (mut storage, recovered) = match &config.storage {
        Some(storage_config) => {
            let (storage, recovery) = Storage::open(&rt, disk, storage_config.clone())
                .await
                .map_err(|e| io::Error::other(format!("cannot recover storage: {e}")))?;
            (Some(storage), recovery.stores)
        }
        None => (None, BTreeMap::new()),
    };
    let net = Arc::new(
        rt.bind(Some(config.listen_addr), Some(config.advertise_addr))
            .await?,
    );
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen_addr,
        advertise = %config.advertise_addr,
        manager = %config.manager_addr,
        persistence = storage.is_some(),
        recovered_partitions = recovered.len(),
        "server started"
    );
    let register = encode_msg(&Msg::Register {
        node_id: config.node_id,
        addr: config.advertise_addr,
    })
    .expect("register encodes");
    {
        let (net, rt2) = (net.clone(), rt.clone());
        let (manager, interval) = (config.manager_addr, config.heartbeat_interval);
        rt.spawn(async move {
            loop {
                net.send(manager, register.clone());
                rt2.sleep(interval).await;
            }
        });
    }
    let mut core = ServerCore::with_stores(config.node_id, recovered);
    // Replies waiting for the log to be durable up to their LSN (ascending).
    let mut held: VecDeque<(Lsn, SocketAddr, Msg)> = VecDeque::new();
    let send = |to: SocketAddr, reply: &Msg| match encode_msg(reply) {
        Ok(bytes) => net.send(to, bytes),
        Err(e) => tracing::error!("cannot encode reply: {e}"),
    };
    loop {
        let event = match storage.as_mut() {
            Some(s) => {
                let accept = s.pending_records() < PENDING_RECORDS_MAX;
                tokio::select! {
                    biased;
                    durable = s.durable_changed() => Event::Durable(durable),
                    received = net.recv(), if accept => Event::Received(received),
                }
            }
            None => Event::Received(net.recv().await),
        };
        let (from, payload) = match event {
            Event::Durable(Ok(lsn)) => {
                while held.front().is_some_and(|(wait, _, _)| *wait <= lsn) {
                    let (_, to, reply) = held.pop_front().unwrap();
                    send(to, &reply);
                }
                if let Some(s) = storage.as_mut() {
                    s.maybe_checkpoint(&rt, core.stores());
                }
                continue;
            }
            Event::Durable(Err(reason)) => {
                // Fail-stop: in-memory state is ahead of what is on disk.
                for (_, to, reply) in held.drain(..) {
                    if let Msg::ExecuteReply { req, .. } = reply {
                        let failed = Msg::ExecuteReply {
                            req,
                            result: Err(ExecError::Storage {
                                node_id: config.node_id,
                                reason: reason.clone(),
                            }),
                        };
                        send(to, &failed);
                    }
                }
                return Err(io::Error::other(format!(
                    "storage failed, stopping (restart to recover from disk): {reason}"
                )));
            }
            Event::Received(received) => received?,
        };
        let msg = match decode_msg(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, "dropping message: {e}");
                continue;
            }
        };
        let reply = match msg {
            Msg::RegisterReply { .. } if from != config.manager_addr => {
                tracing::warn!(%from, "ignoring a registration reply that did not come from the manager");
                None
            }
            Msg::RegisterReply { result: Ok(map) } if map.validate().is_err() => {
                tracing::error!(
                    "ignoring an invalid partition map from the manager: {:?}",
                    map.validate()
                );
                None
            }
            Msg::RegisterReply { result: Ok(map) } => {
                for range in core.install_map(map) {
                    if let Some(s) = storage.as_mut() {
                        s.log_host(rt.now(), &range);
                    }
                }
                None
            }
            Msg::RegisterReply {
                result: Err(reason),
            } => {
                return Err(io::Error::other(format!(
                    "the manager at {} refused this server: {reason}",
                    config.manager_addr
                )));
            }
            Msg::Execute {
                req,
                session,
                seq,
                partition,
                ops,
            } => {
                let (result, changed) = core.execute(session, seq, partition, &ops);
                if changed {
                    if let Some(s) = storage.as_mut() {
                        s.log_command(rt.now(), partition, session, seq, &ops);
                    }
                }
                Some(Msg::ExecuteReply { req, result })
            }
            other => {
                tracing::warn!(%from, "server ignores unexpected message {other:?}");
                None
            }
        };
        if let Some(reply) = reply {
            // Whatever this reply reflects must be durable first: that is
            // everything appended so far (reads too may have seen it).
            #[cfg(feature = "sim")]
            let ack_before_fsync = crate::bugs::enabled(crate::bugs::Bug::AckBeforeFsync);
            #[cfg(not(feature = "sim"))]
            let ack_before_fsync = false;
            match storage.as_ref() {
                Some(s)
                    if !ack_before_fsync
                        && !matches!(s.durable(), Ok(d) if d >= s.last_appended()) =>
                {
                    held.push_back((s.last_appended(), from, reply));
                }
                _ => send(from, &reply),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::parse_op;

    fn map() -> PartitionMap {
        let servers: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        PartitionMap::build(&[("t".into(), 100)], &servers, 1).unwrap()
    }

    #[test]
    fn refuses_until_it_has_a_map_then_serves_only_its_partitions() {
        let mut core = ServerCore::new(1);
        let put = vec![parse_op("PUT t60 x").unwrap()];
        let not_ready = ExecError::NotReady { node_id: 1 };
        assert_eq!(core.execute(1, 1, 1, &put), (Err(not_ready), false));
        assert_eq!(
            core.install_map(map()).len(),
            1,
            "newly hosted partitions are reported"
        );
        assert_eq!(core.stores().len(), 1);
        let wrong = ExecError::WrongPartition {
            node_id: 1,
            partition: 0,
        };
        assert_eq!(core.execute(1, 1, 0, &put), (Err(wrong), false));
        let created = vec![OpResult::Put { found: false }];
        assert_eq!(
            core.execute(1, 1, 1, &put),
            (Ok(created), true),
            "a write changes state"
        );
        assert!(
            core.install_map(map()).is_empty(),
            "same epoch: nothing new"
        );
    }

    #[test]
    fn an_older_map_does_not_replace_a_newer_one() {
        let mut core = ServerCore::new(0);
        let mut newer = map();
        newer.epoch = 5;
        core.install_map(newer);
        core.install_map(map());
        assert_eq!(core.map().unwrap().epoch, 5);
    }
}
