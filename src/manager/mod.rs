//! The manager: holds the partition map and serves it. It is not on the data
//! path: clients fetch the map once and then talk to servers directly.
//!
//! ```text
//!   server --Register(node_id, addr, replicas)--> manager --RegisterReply(map)--> server
//!   client --GetMap--> manager --MapReply(map)--> client
//!   admin  --Status--> manager --StatusReply(servers, partitions)--> admin
//! ```
//! Registrations double as heartbeats that carry the state of each replica
//! ([`status`]), which the manager keeps for `admin`.
//! The map is a pure function of the configuration ([`PartitionMap::build`]),
//! so a restarted manager recovers it exactly; servers re-register within a
//! heartbeat and refresh the advertised addresses.

pub mod status;

use crate::map::{MapError, NodeId, PartitionMap};
use crate::rt::{Net, Runtime};
use crate::wire::{decode_msg, encode_msg, Msg};
use status::Heartbeats;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Manager configuration. Every field is validated by [`ManagerConfig::build_map`].
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Where servers and clients reach the manager.
    pub listen_addr: SocketAddr,
    /// The cluster's servers; server `i` (its `--node-id`) is `servers[i]`.
    pub servers: Vec<SocketAddr>,
    /// Tables and the size of each one's initial key space `[0, N)`.
    pub tables: Vec<(String, u64)>,
    /// Replicas per partition (capped at the number of servers).
    pub replicas: usize,
    /// A server not heard from for this long is declared dead (`admin`
    /// shows it; nothing acts on it yet).
    pub dead_after: Duration,
}

impl ManagerConfig {
    /// Like CockroachDB's `server.time_until_store_dead`: long enough that
    /// a restart or a short network outage never counts.
    pub const DEAD_AFTER_DEFAULT: Duration = Duration::from_secs(300);

    /// Builds the initial map. Listed server addresses with an unspecified IP
    /// (`0.0.0.0`) are not dialable, so they are shown as loopback until the
    /// server registers its advertised address.
    pub fn build_map(&self) -> Result<PartitionMap, MapError> {
        let servers: Vec<SocketAddr> = self
            .servers
            .iter()
            .map(|a| {
                if a.ip().is_unspecified() {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
                } else {
                    *a
                }
            })
            .collect();
        PartitionMap::build(&self.tables, &servers, self.replicas)
    }
}

/// The manager's state machine: messages in, replies out. No IO.
pub struct ManagerCore {
    map: PartitionMap,
    heartbeats: Heartbeats,
}

impl ManagerCore {
    /// Starting at `now`; servers silent for `dead_after` are dead.
    pub fn new(map: PartitionMap, now: Instant, dead_after: Duration) -> ManagerCore {
        ManagerCore {
            map,
            heartbeats: Heartbeats::new(now, dead_after),
        }
    }

    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// Handles one request received at `now`; returns the reply, if any.
    pub fn handle(&mut self, msg: Msg, now: Instant) -> Option<Msg> {
        match msg {
            Msg::GetMap { req } => Some(Msg::MapReply {
                req,
                map: self.map.clone(),
            }),
            Msg::Register {
                node_id,
                addr,
                replicas,
            } => {
                let result = self.register(node_id, addr);
                if result.is_ok() {
                    self.heartbeats.record(node_id, replicas, now);
                }
                Some(Msg::RegisterReply { result })
            }
            Msg::Status { req } => Some(Msg::StatusReply {
                req,
                status: self.heartbeats.status(&self.map, now),
            }),
            other => {
                tracing::warn!("manager ignores unexpected message {other:?}");
                None
            }
        }
    }

    fn register(&mut self, node_id: NodeId, addr: SocketAddr) -> Result<PartitionMap, String> {
        let Some(known) = self.map.servers.get_mut(&node_id) else {
            return Err(format!(
                "unknown node id {node_id}: the manager's --servers lists {} servers (ids 0..{})",
                self.map.servers.len(),
                self.map.servers.len()
            ));
        };
        if addr.ip().is_unspecified() {
            return Err(format!(
                "server {node_id} advertised {addr}, which others cannot dial; set --advertise-addr"
            ));
        }
        if *known != addr {
            tracing::info!(node_id, old = %known, new = %addr, "server address changed");
            *known = addr;
            self.map.epoch += 1;
        }
        Ok(self.map.clone())
    }
}

/// Runs the manager until its network endpoint fails.
pub async fn run_manager<R: Runtime>(rt: R, config: ManagerConfig) -> io::Result<()> {
    let map = config
        .build_map()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let net = rt.bind(Some(config.listen_addr), None).await?;
    tracing::info!(
        addr = %config.listen_addr,
        partitions = map.partitions.len(),
        servers = map.servers.len(),
        "manager listening"
    );
    let mut core = ManagerCore::new(map, rt.now(), config.dead_after);
    loop {
        let (from, payload) = net.recv().await?;
        let msg = match decode_msg(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, "dropping message: {e}");
                continue;
            }
        };
        if let Some(reply) = core.handle(msg, rt.now()) {
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

    fn register(node_id: NodeId, addr: SocketAddr) -> Msg {
        Msg::Register {
            node_id,
            addr,
            replicas: Vec::new(),
        }
    }

    fn core() -> ManagerCore {
        let config = ManagerConfig {
            listen_addr: "0.0.0.0:24000".parse().unwrap(),
            servers: vec![
                "0.0.0.0:23000".parse().unwrap(),
                "10.1.1.1:23000".parse().unwrap(),
            ],
            tables: vec![("t".into(), 100)],
            replicas: 3,
            dead_after: ManagerConfig::DEAD_AFTER_DEFAULT,
        };
        ManagerCore::new(
            config.build_map().unwrap(),
            Instant::now(),
            config.dead_after,
        )
    }

    #[test]
    fn unspecified_listed_addresses_become_loopback() {
        let c = core();
        assert_eq!(c.map().servers[&0], "127.0.0.1:23000".parse().unwrap());
    }

    #[test]
    fn registration_updates_the_advertised_address_and_bumps_the_epoch() {
        let mut c = core();
        let addr: SocketAddr = "192.168.0.5:23000".parse().unwrap();
        let Some(Msg::RegisterReply { result: Ok(map) }) =
            c.handle(register(0, addr), Instant::now())
        else {
            panic!("expected a map");
        };
        assert_eq!(map.servers[&0], addr);
        assert_eq!(map.epoch, 2);
        // Same address again: no change.
        c.handle(register(0, addr), Instant::now());
        assert_eq!(c.map().epoch, 2);
    }

    #[test]
    fn registration_of_an_unknown_or_undialable_server_is_refused() {
        let mut c = core();
        let reply = c.handle(register(9, "127.0.0.1:1".parse().unwrap()), Instant::now());
        assert!(
            matches!(reply, Some(Msg::RegisterReply { result: Err(e) }) if e.contains("unknown node id 9"))
        );
        let reply = c.handle(register(0, "0.0.0.0:1".parse().unwrap()), Instant::now());
        assert!(matches!(reply, Some(Msg::RegisterReply { result: Err(_) })));
    }
}
