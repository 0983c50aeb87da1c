//! `admin`: what an operator asks of a running cluster (README "Operating
//! a cluster").
use clap::{Parser, Subcommand};
use distkv::client::{Client, ClientError};
use distkv::manager::status::{ClusterStatus, PartitionInfo, ServerInfo, ServerState};
use distkv::map::{NodeId, PartitionId};
use distkv::rt::tokio_rt::TokioRuntime;
use distkv::wire::ServerAction;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "distkv admin: inspect and steer a running cluster",
    after_help = "The manager learns each replica's state from the servers' heartbeats (sent \
                  every --heartbeat-ms of the server, 1 s by default), so what it shows may lag \
                  by that much. Exit status: 0 done, 1 the cluster or the manager could not be reached \
                  or refused, 2 bad arguments."
)]
struct Args {
    /// The manager; with several (`manager --peers`), any or all of them, comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "0.0.0.0:24000",
        value_delimiter = ','
    )]
    connect_addr: Vec<SocketAddr>,
    /// How long to wait for the cluster, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// Print JSON (one object) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: distkv::cli::TlsArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every server: address, whether the manager hears it (up /
    /// unreachable / unknown), time since its last heartbeat, its replicas
    /// and how many of them it leads.
    Servers,
    /// Every partition: table, key range, replicas (voters), learners (new
    /// replicas catching up), leader, term, applied index and key count
    /// (the leader's), and which replicas reported.
    Partitions,
    /// Membership changes under way: per partition, the step the manager
    /// last asked of its leader (add learner, promote, remove, transfer
    /// leadership) and how long ago, the learners catching up, the server
    /// it is leaving, and why (repair, balance, operator).
    Moves,
    /// Move one replica of a partition from one server to another: a
    /// learner on the target, promoted once caught up, then the replica on
    /// the source removed (its leadership handed over first if it leads).
    /// Returns once the move started; `admin moves` shows its progress.
    Move {
        /// The partition (its id, as `admin partitions` shows it).
        #[arg(long)]
        partition: PartitionId,
        /// The server whose replica moves away.
        #[arg(long)]
        from: NodeId,
        /// The server that gets it (up, not draining, not holding one).
        #[arg(long)]
        to: NodeId,
    },
    /// The managers (with `manager --peers`): each one's control-group
    /// address and which one leads (plans moves and hands out maps).
    Managers,
    /// Hand the leadership of a partition to another of its replicas, and
    /// wait until the manager sees the new leader.
    TransferLeader {
        /// The partition (its id, as `admin partitions` shows it).
        #[arg(long)]
        partition: PartitionId,
        /// The server that is to lead it (one of its replicas).
        #[arg(long)]
        to: NodeId,
    },
    /// Split a partition in two at a key (by default its middle key): the
    /// keys from there on become a new partition on the same servers, with
    /// a Raft group of its own, which then moves like any other. Decided
    /// through the partition's log; waits until the manager's map shows the
    /// new partition. (The manager also splits partitions past
    /// `--split-size-mb` / `--split-keys` by itself.)
    Split {
        /// The partition (its id, as `admin partitions` shows it).
        #[arg(long)]
        partition: PartitionId,
        /// The first key of the new partition, e.g. `customers500` (it must
        /// lie inside the partition, after its first key).
        #[arg(long, value_parser = parse_key)]
        at: Option<distkv::key::Key>,
    },
    /// Move every replica and leadership off a server (to retire it or to
    /// take it down for long): new replicas are made on the other servers
    /// first, so nothing becomes unavailable. `admin servers` shows its
    /// replica count going to 0. A restarted manager forgets a drain.
    Drain {
        #[arg(long)]
        node: NodeId,
    },
    /// Stop draining a server: it takes replicas again.
    Undrain {
        #[arg(long)]
        node: NodeId,
    },
    /// Remove a server that holds no replica (drained, or never used) from
    /// the cluster; stop its process afterwards.
    RemoveServer {
        #[arg(long)]
        node: NodeId,
    },
    /// Take a consistent backup of every table into a new directory: the
    /// whole cluster at one instant (one transaction), read while writes go
    /// on, written as one rows file per table and a manifest with SHA-256
    /// checksums (README "Backup and restore").
    Backup {
        /// The directory to create (it must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Restore a backup into a cluster whose tables exist (manager
    /// `--tables`) and are empty: checks every file against the manifest
    /// first, writes every key, then checks the counts.
    Restore {
        /// The backup directory (`admin backup --out`).
        #[arg(long, value_name = "DIR")]
        from: std::path::PathBuf,
        /// Commands in flight at once.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
        workers: u32,
    },
    /// Make a test CA and certificates for TLS in a directory (needs no cluster): ca.pem (give
    /// it to every process as --tls-ca), ca.key (keep it safe: it signs), node.pem / node.key
    /// (servers and managers) and client.pem / client.key (client, benchmark, admin).
    GenCerts {
        /// The directory to write them to (created if missing; existing files are replaced).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.tls.enable_or_exit();
    distkv::cli::init_logging("warn");
    if let Command::GenCerts { out, days } = &args.command {
        return match distkv::rt::tls::generate(out, *days) {
            Ok(files) => {
                for f in files {
                    println!("{f}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let client = distkv::cli::connect_or_exit(&rt, &args.connect_addr, args.timeout_ms);
    let result = rt.block_on(async {
        match args.command {
            Command::Servers => status(&client).await.map(|s| {
                if args.json {
                    json(&s.servers)
                } else {
                    servers_table(&s.servers)
                }
            }),
            Command::Partitions => status(&client).await.map(|s| {
                if args.json {
                    json(&s.partitions)
                } else {
                    partitions_table(&s.partitions)
                }
            }),
            Command::Moves => status(&client).await.map(|s| {
                if args.json {
                    json(&s.moves)
                } else {
                    moves_table(&s.moves)
                }
            }),
            Command::Move {
                partition,
                from,
                to,
            } => client
                .move_replica(partition, from, to)
                .await
                .map(|said| {
                    if args.json {
                        json(&serde_json::json!({ "partition": partition, "from": from, "to": to, "message": said }))
                    } else {
                        format!("{said}\n")
                    }
                })
                .map_err(|e| e.to_string()),
            Command::Managers => status(&client).await.map(|s| {
                if args.json {
                    json(&s.managers)
                } else {
                    managers_table(&s.managers)
                }
            }),
            Command::Drain { node } => {
                server_admin(&client, node, ServerAction::Drain, args.json).await
            }
            Command::Undrain { node } => {
                server_admin(&client, node, ServerAction::Undrain, args.json).await
            }
            Command::RemoveServer { node } => {
                server_admin(&client, node, ServerAction::Remove, args.json).await
            }
            Command::GenCerts { .. } => unreachable!("made before connecting"),
            Command::Backup { out } => {
                let started = Instant::now();
                let mut report = Reporter::new("backup");
                distkv::backup::backup(&client, &out, unix_ms, |p| report.progress(p))
                    .await
                    .map(|m| {
                        if args.json {
                            json(&m)
                        } else {
                            let keys: u64 = m.tables.iter().map(|t| t.keys).sum();
                            let bytes: u64 = m.tables.iter().map(|t| t.file_bytes).sum();
                            format!(
                                "backup of {keys} keys in {} tables ({bytes} bytes) written to {} in {:.1} s; \
                                 the data is the cluster's as of its transaction's commit (unix ms {})\n",
                                m.tables.len(),
                                out.display(),
                                started.elapsed().as_secs_f64(),
                                m.taken_unix_ms
                            )
                        }
                    })
            }
            Command::Restore { from, workers } => {
                let started = Instant::now();
                let report = std::sync::Mutex::new(Reporter::new("restore"));
                distkv::backup::restore(&client, &from, workers as usize, |p| {
                    report.lock().unwrap().progress(p)
                })
                .await
                .map(|r| {
                    if args.json {
                        json(&serde_json::json!({
                            "tables": r.tables, "keys": r.keys, "bytes": r.bytes,
                            "seconds": started.elapsed().as_secs_f64()
                        }))
                    } else {
                        format!(
                            "restored {} keys of {} tables from {} in {:.1} s; counts checked\n",
                            r.keys,
                            r.tables,
                            from.display(),
                            started.elapsed().as_secs_f64()
                        )
                    }
                })
            }
            Command::Split { partition, at } => {
                let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
                split(&client, partition, at, deadline)
                    .await
                    .map(|(said, child, start)| {
                        if args.json {
                            json(&serde_json::json!({
                                "partition": partition, "new_partition": child,
                                "new_partition_start": start, "message": said
                            }))
                        } else {
                            format!("{said}\n")
                        }
                    })
            }
            Command::TransferLeader { partition, to } => {
                let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
                transfer_leader(&client, partition, to, deadline)
                    .await
                    .map(|said| {
                        if args.json {
                            json(&serde_json::json!({
                                "partition": partition, "leader": to, "message": said
                            }))
                        } else {
                            format!("{said}\n")
                        }
                    })
            }
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn server_admin(
    client: &Client<TokioRuntime>,
    node: NodeId,
    action: ServerAction,
    as_json: bool,
) -> Result<String, String> {
    let said = client.server_admin(node, action).await.map_err(refusal)?;
    Ok(if as_json {
        json(&serde_json::json!({ "node": node, "message": said }))
    } else {
        format!("{said}\n")
    })
}

async fn status(client: &Client<TokioRuntime>) -> Result<ClusterStatus, String> {
    client.cluster_status().await.map_err(|e| e.to_string())
}

fn moves_table(moves: &[distkv::manager::status::MoveInfo]) -> String {
    if moves.is_empty() {
        return "no moves under way\n".to_string();
    }
    let rows = moves
        .iter()
        .map(|m| {
            vec![
                m.partition.to_string(),
                m.step.clone().unwrap_or_else(|| "-".to_string()),
                m.asked_ms.map_or("-".to_string(), |ms| {
                    format!("{:.1}s ago", ms as f64 / 1000.0)
                }),
                if m.learners.is_empty() {
                    "-".to_string()
                } else {
                    m.learners
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                m.leaving.map_or("-".to_string(), |n| n.to_string()),
                m.reason.clone(),
            ]
        })
        .collect();
    table(
        &[
            "PARTITION",
            "STEP",
            "ASKED",
            "LEARNERS",
            "LEAVING",
            "REASON",
        ],
        rows,
    )
}

fn managers_table(m: &distkv::manager::status::ManagersInfo) -> String {
    if m.peers.is_empty() {
        return "one manager (no --peers): it leads; its drains and removals are not \
                replicated\n"
            .to_string();
    }
    let mut out = format!("{:<4}{:<24}ROLE\n", "ID", "PEER ADDRESS");
    for (i, addr) in m.peers.iter().enumerate() {
        let role = if m.leader == Some(i as u64) {
            "leader"
        } else {
            "-"
        };
        out += &format!("{:<4}{:<24}{role}\n", i, addr.to_string());
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Progress of a long backup or restore on stderr, once a second.
struct Reporter {
    what: &'static str,
    last: Instant,
}

impl Reporter {
    fn new(what: &'static str) -> Reporter {
        Reporter {
            what,
            last: Instant::now(),
        }
    }

    fn progress(&mut self, p: distkv::backup::Progress) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let pct = (p.keys_done * 100).checked_div(p.keys_total).unwrap_or(100);
            eprintln!(
                "{}: {} of {} keys ({pct}%)",
                self.what, p.keys_done, p.keys_total
            );
        }
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("status encodes") + "\n"
}

/// Sends the request to the partition's leader (as the manager last saw
/// it), then polls the manager until it reports `to` leading.
async fn transfer_leader(
    client: &Client<TokioRuntime>,
    partition: PartitionId,
    to: NodeId,
    deadline: Instant,
) -> Result<String, String> {
    let s = status(client).await?;
    let Some(p) = s.partitions.iter().find(|p| p.id == partition) else {
        return Err(format!(
            "there is no partition {partition} (see `admin partitions`)"
        ));
    };
    if !p.replicas.contains(&to) {
        return Err(format!(
            "server {to} holds no replica of partition {partition} (its replicas: {:?})",
            p.replicas
        ));
    }
    if p.leader == Some(to) {
        return Ok(format!("server {to} already leads partition {partition}"));
    }
    let addr = leader_addr(&s, p)?;
    let said = client
        .transfer_leader(addr, partition, to)
        .await
        .map_err(refusal)?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = status(client).await?;
        let now = s.partitions.iter().find(|p| p.id == partition);
        if now.and_then(|p| p.leader) == Some(to) {
            return Ok(format!(
                "{said}: server {to} now leads partition {partition}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{said}, but the manager does not see server {to} leading it yet \
                 (leader: {}); is server {to} up?",
                now.and_then(|p| p.leader)
                    .map_or("none".to_string(), |l| format!("server {l}"))
            ));
        }
    }
}

fn parse_key(s: &str) -> Result<distkv::key::Key, String> {
    distkv::key::Key::parse(s).map_err(|e| e.to_string())
}

/// Asks the partition's leader (as the manager last saw it) to split it,
/// then polls the manager until its map shows the new partition. Returns
/// the message, the new partition's id and its first key number.
async fn split(
    client: &Client<TokioRuntime>,
    partition: PartitionId,
    at: Option<distkv::key::Key>,
    deadline: Instant,
) -> Result<(String, PartitionId, u64), String> {
    let s = status(client).await?;
    let Some(p) = s.partitions.iter().find(|p| p.id == partition) else {
        return Err(format!(
            "there is no partition {partition} (see `admin partitions`)"
        ));
    };
    if let Some(key) = &at {
        let inside = key.num > p.start && p.end.is_none_or(|e| key.num < e);
        if key.table != p.table || !inside {
            return Err(format!(
                "{key} is not inside partition {partition} ({}[{}, {})): both halves must hold keys",
                p.table,
                p.start,
                p.end.map_or("inf".to_string(), |e| e.to_string())
            ));
        }
    }
    let addr = leader_addr(&s, p)?;
    let said = client
        .split_partition(addr, partition, at.map(|k| k.num))
        .await
        .map_err(refusal)?;
    let end_before = p.end;
    loop {
        let s = status(client).await?;
        let now = s.partitions.iter().find(|p| p.id == partition);
        if let Some(end) = now.and_then(|p| p.end).filter(|&e| Some(e) != end_before) {
            if let Some(child) = s
                .partitions
                .iter()
                .find(|c| c.table == p.table && c.start == end)
            {
                return Ok((
                    format!("{said}; the manager's map has it (epoch {})", s.epoch),
                    child.id,
                    end,
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{said}, but the manager's map does not show it yet; see `admin partitions`"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the leader of partition `p` is, as the manager last saw it.
fn leader_addr(s: &ClusterStatus, p: &PartitionInfo) -> Result<SocketAddr, String> {
    let Some(leader) = p.leader else {
        return Err(format!(
            "partition {} has no known leader right now; try again in a moment",
            p.id
        ));
    };
    s.servers
        .iter()
        .find(|x| x.id == leader)
        .map(|x| x.addr)
        .ok_or_else(|| format!("server {leader} is not in the map"))
}

/// A refusal says why; anything else says what happened.
fn refusal(e: ClientError) -> String {
    match e {
        ClientError::Rejected(why) => why,
        e => e.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn servers_table(servers: &[ServerInfo]) -> String {
    let rows = servers
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.addr.to_string(),
                if s.draining && s.state == ServerState::Up {
                    "draining".to_string()
                } else {
                    s.state.name().to_string()
                },
                s.last_heartbeat_ms.map_or("never".to_string(), |ms| {
                    format!("{:.1}s ago", ms as f64 / 1e3)
                }),
                s.replicas.to_string(),
                s.leaders.to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "ADDRESS", "STATE", "HEARTBEAT", "REPLICAS", "LEADERS"],
        rows,
    )
}

/// `512B`, `1.5KiB`, `96.0MiB`.
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

fn partitions_table(partitions: &[PartitionInfo]) -> String {
    let list = |ids: &[NodeId]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let rows = partitions
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.table.clone(),
                format!(
                    "[{}, {})",
                    p.start,
                    p.end.map_or("∞".to_string(), |e| e.to_string())
                ),
                list(&p.replicas),
                if p.learners.is_empty() {
                    "-".to_string()
                } else {
                    list(&p.learners)
                },
                p.leader.map_or("-".to_string(), |l| l.to_string()),
                p.term.to_string(),
                p.applied.to_string(),
                p.keys.to_string(),
                human_bytes(p.bytes),
                list(&p.reporting),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TABLE",
            "RANGE",
            "REPLICAS",
            "LEARNERS",
            "LEADER",
            "TERM",
            "APPLIED",
            "KEYS",
            "SIZE",
            "REPORTING",
        ],
        rows,
    )
}
