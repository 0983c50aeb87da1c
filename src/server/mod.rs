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
use crate::map::{NodeId, PartitionId, PartitionMap};
use crate::op::{Op, OpResult};
use crate::rt::{Net, Runtime};
use crate::wire::{decode_msg, encode_msg, ExecError, Msg};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Data (snapshots) directory; used once persistence lands.
    pub db_path: Option<PathBuf>,
    /// Write-ahead log directory; used once persistence lands.
    pub log_path: Option<PathBuf>,
}

impl ServerConfig {
    pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(1000);
}

/// The server's state machine: the map it knows and the partitions it hosts.
pub struct ServerCore {
    node_id: NodeId,
    map: Option<PartitionMap>,
    stores: BTreeMap<PartitionId, PartitionStore>,
}

impl ServerCore {
    pub fn new(node_id: NodeId) -> ServerCore {
        ServerCore {
            node_id,
            map: None,
            stores: BTreeMap::new(),
        }
    }

    pub fn map(&self) -> Option<&PartitionMap> {
        self.map.as_ref()
    }

    pub fn hosted(&self) -> impl Iterator<Item = &PartitionStore> {
        self.stores.values()
    }

    /// Adopts `map` if it is newer than ours and opens a store for every
    /// partition we now serve. Existing stores keep their data.
    pub fn install_map(&mut self, map: PartitionMap) {
        if self.map.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return;
        }
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
            }
        }
        self.map = Some(map);
    }

    /// Executes a client's command on one of our partitions.
    pub fn execute(
        &mut self,
        session: u64,
        seq: u64,
        partition: PartitionId,
        ops: &[Op],
    ) -> Result<Vec<OpResult>, ExecError> {
        if self.map.is_none() {
            return Err(ExecError::NotReady {
                node_id: self.node_id,
            });
        }
        let store = self
            .stores
            .get_mut(&partition)
            .ok_or(ExecError::WrongPartition {
                node_id: self.node_id,
                partition,
            })?;
        Ok(store.execute_once(session, seq, ops)??)
    }
}

/// Runs a server until its network endpoint fails or the manager refuses it.
pub async fn run_server<R: Runtime>(rt: R, config: ServerConfig) -> io::Result<()> {
    let net = Arc::new(
        rt.bind(Some(config.listen_addr), Some(config.advertise_addr))
            .await?,
    );
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen_addr,
        advertise = %config.advertise_addr,
        manager = %config.manager_addr,
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
    let mut core = ServerCore::new(config.node_id);
    loop {
        let (from, payload) = net.recv().await?;
        let msg = match decode_msg(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, "dropping message: {e}");
                continue;
            }
        };
        let reply = match msg {
            Msg::RegisterReply { result: Ok(map) } => {
                core.install_map(map);
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
            } => Some(Msg::ExecuteReply {
                req,
                result: core.execute(session, seq, partition, &ops),
            }),
            other => {
                tracing::warn!(%from, "server ignores unexpected message {other:?}");
                None
            }
        };
        if let Some(reply) = reply {
            match encode_msg(&reply) {
                Ok(bytes) => net.send(from, bytes),
                Err(e) => tracing::error!("cannot encode reply: {e}"),
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
        assert_eq!(
            core.execute(1, 1, 1, &put),
            Err(ExecError::NotReady { node_id: 1 })
        );
        core.install_map(map());
        assert_eq!(core.hosted().count(), 1);
        assert_eq!(
            core.execute(1, 1, 0, &put),
            Err(ExecError::WrongPartition {
                node_id: 1,
                partition: 0
            })
        );
        assert_eq!(
            core.execute(1, 1, 1, &put),
            Ok(vec![OpResult::Put { found: false }])
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
