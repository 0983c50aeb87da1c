//! `cargo bench --bench control_plane`: what one manager costs per
//! heartbeat round as the cluster grows (issue 11, item 9: "how far one
//! control plane goes").
//!
//! For each size (servers x partitions, 3 replicas each) it builds the
//! manager's core from the initial map, then times full heartbeat rounds:
//! every server's `Register` (with one status per replica it holds, the
//! leaders' with their membership and range, as real servers send them)
//! decoded and handled, the reply encoded, and one `plan` (the re-replication
//! and balancing pass, once per second in production). It also reports the
//! bytes a round moves (heartbeats in, maps out) and one client map.
//! Numbers, not assertions: compare runs on the same machine.

use distkv::manager::status::{ReplicaRole, ReplicaStatus, ReportedConfig, ReportedRange};
use distkv::manager::ManagerCore;
use distkv::map::PartitionMap;
use distkv::wire::{decode_msg, encode_msg, Msg};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn main() {
    let rounds: u32 = std::env::var("CONTROL_PLANE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("control-plane bench: {rounds} heartbeat rounds per size, 3 replicas per partition");
    println!(
        "{:>8} {:>11} {:>13} {:>13} {:>10} {:>14} {:>14} {:>10}",
        "servers",
        "partitions",
        "round (ms)",
        "plan (ms)",
        "per hb (µs)",
        "hb in (KB)",
        "replies (KB)",
        "map (KB)"
    );
    for (servers, partitions) in [(3, 30), (30, 3_000), (100, 10_000), (300, 30_000)] {
        let r = measure(servers, partitions, rounds);
        println!(
            "{:>8} {:>11} {:>13.2} {:>13.2} {:>10.1} {:>14.0} {:>14.0} {:>10.0}",
            servers,
            partitions,
            r.round.as_secs_f64() * 1e3,
            r.plan.as_secs_f64() * 1e3,
            r.round.as_secs_f64() * 1e6 / servers as f64,
            r.bytes_in as f64 / 1024.0,
            r.bytes_out as f64 / 1024.0,
            r.map_bytes as f64 / 1024.0,
        );
    }
}

struct Round {
    /// Handling every server's heartbeat (decode, learn, record, encode the
    /// reply), mean per round.
    round: Duration,
    /// One `plan`, mean.
    plan: Duration,
    bytes_in: usize,
    bytes_out: usize,
    map_bytes: usize,
}

fn measure(servers: usize, partitions: usize, rounds: u32) -> Round {
    let addrs: Vec<SocketAddr> = (0..servers)
        .map(|i| SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 23000)))
        .collect();
    // Tables of `servers` partitions each (one per server, as `build` makes).
    let tables: Vec<(String, u64)> = (0..partitions / servers)
        .map(|t| (distkv::key::numbered_table_name(t), servers as u64 * 1000))
        .collect();
    let map = PartitionMap::build(&tables, &addrs, 3).expect("a valid map");
    let start = Instant::now();
    let mut core = ManagerCore::new(map.clone(), start, Duration::from_secs(300), 3);
    // Every server's heartbeat, as it would send it: a status per replica.
    let heartbeats: Vec<Vec<u8>> = (0..servers as u64)
        .map(|node| {
            let replicas: Vec<ReplicaStatus> = map
                .partitions
                .values()
                .filter(|p| p.replicas.contains(&node))
                .map(|p| {
                    let leads = p.replicas[0] == node;
                    ReplicaStatus {
                        partition: p.id,
                        role: if leads {
                            ReplicaRole::Leader
                        } else {
                            ReplicaRole::Follower
                        },
                        term: 3,
                        leader: Some(p.replicas[0]),
                        commit: 123_456,
                        applied: 123_456,
                        keys: 50_000,
                        bytes: 5_000_000,
                        config: leads.then(|| ReportedConfig {
                            conf_index: 1,
                            voters: p.replicas.clone(),
                            learners: Vec::new(),
                        }),
                        range: leads.then(|| ReportedRange {
                            end: p.end,
                            splits: Vec::new(),
                        }),
                    }
                })
                .collect();
            encode_msg(&Msg::Register {
                node_id: node,
                addr: addrs[node as usize],
                epoch: 1,
                join: false,
                replicas,
            })
            .expect("a heartbeat encodes")
        })
        .collect();
    let bytes_in: usize = heartbeats.iter().map(Vec::len).sum();
    let (mut handled, mut planned, mut bytes_out) = (Duration::ZERO, Duration::ZERO, 0);
    for round in 0..rounds {
        let now = start + Duration::from_secs(u64::from(round) + 1);
        let t = Instant::now();
        bytes_out = 0;
        for hb in &heartbeats {
            let msg = decode_msg(hb).expect("a heartbeat decodes");
            if let Some(reply) = core.handle(msg, now) {
                bytes_out += encode_msg(&reply).expect("a reply encodes").len();
            }
        }
        handled += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(core.plan(now));
        planned += t.elapsed();
    }
    let map_bytes = encode_msg(&Msg::MapReply {
        req: 1,
        map: core.map().clone(),
    })
    .expect("a map encodes")
    .len();
    Round {
        round: handled / rounds,
        plan: planned / rounds,
        bytes_in,
        bytes_out,
        map_bytes,
    }
}
