//! Operators' numbers, in Prometheus form (`--metrics-addr` on the server and
//! the manager; README "Metrics" lists them).
//!
//! Core code records through the `metrics` facade, which does nothing until
//! a recorder is installed: the simulator installs none, so recording never
//! changes what a simulation does (no time, no randomness, no order). The
//! binaries install the Prometheus exporter with [`install`], which serves
//! `GET /metrics` (any path) on its own address.
//!
//! Names follow Prometheus conventions: a `distkv_` prefix, base units
//! (seconds, bytes) in the name, `_total` on counters. Per-partition series
//! carry a `partition` label; series of a partition this process no longer
//! hosts disappear after [`IDLE_TIMEOUT`].

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::manager::status::{ReplicaRole, ReplicaStatus};
use crate::wire::ExecError;

/// A series not updated for this long is dropped from the scrape (a
/// partition moved away, a server removed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Histogram buckets for latencies, in seconds: 50 µs .. 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets for counts per batch (records per fsync, messages per burst).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether [`install`] ran in this process: work done only to feed the
/// exporter (per-request bookkeeping, per-partition gauges) is skipped
/// without it, in the simulator too.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How often the driver refreshes the per-partition gauges.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Starts the Prometheus exporter on `addr` (call inside the tokio runtime)
/// and describes every metric. `role` ("server" or "manager") becomes a
/// label on every series, with `node` (its node id).
pub fn install(addr: SocketAddr, role: &str, node: u64) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .add_global_label("role", role)
        .add_global_label("node", node.to_string())
        .idle_timeout(MetricKindMask::ALL, Some(IDLE_TIMEOUT))
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_per_fsync".into()), COUNT_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_per_burst".into()), COUNT_BUCKETS))
        .and_then(|b| b.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}

fn describe() {
    // Requests.
    describe_counter!(
        "distkv_requests_total",
        "Client commands and transaction steps answered, by operation and outcome \
         (ok, aborted: refused as a whole, unavailable: not served here, not applied, \
         unknown: may or may not apply)"
    );
    describe_histogram!(
        "distkv_request_duration_seconds",
        Unit::Seconds,
        "Time from a command's arrival to its reply, by operation"
    );
    describe_gauge!(
        "distkv_requests_in_flight",
        "Commands received and not answered yet"
    );
    // Raft.
    describe_gauge!("distkv_replicas", "Replicas this server hosts");
    describe_gauge!(
        "distkv_leaders",
        "Replicas on this server that lead their group"
    );
    describe_gauge!(
        "distkv_raft_is_leader",
        "1 if this server's replica leads the partition's group"
    );
    describe_gauge!("distkv_raft_term", "The replica's Raft term");
    describe_gauge!(
        "distkv_raft_commit_index",
        "The replica's known commit index"
    );
    describe_gauge!("distkv_raft_applied_index", "The replica's applied index");
    describe_counter!(
        "distkv_raft_leader_changes_total",
        "Times a replica on this server saw its group's leader change"
    );
    describe_counter!(
        "distkv_raft_sent_bytes_total",
        Unit::Bytes,
        "Raft messages sent to other servers (payload bytes)"
    );
    describe_counter!(
        "distkv_raft_batches_sent_total",
        "Frames of Raft messages sent"
    );
    describe_histogram!(
        "distkv_server_messages_per_burst",
        "Received messages handled together before their output is carried out"
    );
    describe_counter!(
        "distkv_snapshots_sent_total",
        "Snapshots encoded for a follower behind the leader's log"
    );
    describe_counter!(
        "distkv_snapshots_installed_total",
        "Snapshots installed from a leader"
    );
    // Data.
    describe_gauge!("distkv_keys", "Keys in the replicas this server hosts");
    describe_gauge!(
        "distkv_stored_bytes",
        Unit::Bytes,
        "Data in the replicas this server hosts (values plus 8 bytes per key)"
    );
    describe_gauge!("distkv_partition_keys", "Keys in the replica");
    describe_gauge!(
        "distkv_partition_bytes",
        Unit::Bytes,
        "Data in the replica (values plus 8 bytes per key)"
    );
    describe_gauge!(
        "distkv_sessions",
        "Client sessions remembered by the replicas (exactly-once retries)"
    );
    // Storage.
    describe_histogram!(
        "distkv_wal_fsync_duration_seconds",
        Unit::Seconds,
        "One group commit: the write and fsync of the log"
    );
    describe_histogram!(
        "distkv_wal_records_per_fsync",
        "Log records made durable by one fsync (group commit batch size)"
    );
    describe_counter!(
        "distkv_wal_written_bytes_total",
        Unit::Bytes,
        "Bytes appended to the write-ahead log"
    );
    describe_gauge!(
        "distkv_wal_pending_records",
        "Log records appended and not durable yet (the server stops reading requests past 65,536)"
    );
    describe_counter!(
        "distkv_checkpoints_total",
        "Checkpoints (snapshots of every replica) taken"
    );
    // Transactions.
    describe_counter!(
        "distkv_txn_recoveries_total",
        "Transactions prepared too long whose fate a leader settled (coordinator gone)"
    );
    // Manager.
    describe_gauge!(
        "distkv_manager_is_leader",
        "1 if this manager leads (plans and hands out maps)"
    );
    describe_gauge!(
        "distkv_manager_map_epoch",
        "Epoch of the manager's partition map"
    );
    describe_gauge!("distkv_manager_partitions", "Partitions in the map");
    describe_gauge!(
        "distkv_manager_servers",
        "Servers in the map, by state (up, unreachable, dead, unknown: not heard since this \
         manager started, draining)"
    );
    describe_counter!(
        "distkv_manager_heartbeats_total",
        "Server registrations and heartbeats received"
    );
}

/// The `outcome` label of a reply.
pub fn outcome<T>(result: &Result<T, ExecError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(
            ExecError::WrongPartition { .. }
            | ExecError::NotReady { .. }
            | ExecError::NotLeader { .. },
        ) => "unavailable",
        Err(ExecError::LeaderChanged { .. }) => "unknown",
        Err(_) => "aborted",
    }
}

/// Records the state a transaction step left its attempt in, as this
/// server answered it (a participant's vote, or a decision applied):
/// prepared, committed, and why aborted. `conflict` is what makes a
/// coordinator retry (wait-die); `rejected` aborts a command for good.
pub fn txn_state(state: &crate::kv::TxnState) {
    use crate::kv::{AbortReason, TxnState};
    let state = match state {
        TxnState::Prepared { .. } => "prepared",
        TxnState::Committed { .. } => "committed",
        TxnState::Aborted(AbortReason::Conflict) => "conflict",
        TxnState::Aborted(AbortReason::Rejected(_)) => "rejected",
        TxnState::Aborted(AbortReason::Fenced) => "fenced",
        TxnState::Aborted(AbortReason::Aborted) => "aborted",
        TxnState::Aborted(AbortReason::Expired) => "expired",
        TxnState::Aborted(AbortReason::Stale) => "stale",
    };
    counter!("distkv_txn_states_total", "state" => state).increment(1);
}

/// Records one answered request.
pub fn request_done(op: &'static str, outcome: &'static str, took: Duration) {
    counter!("distkv_requests_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("distkv_request_duration_seconds", "op" => op).record(took.as_secs_f64());
}

/// Per-partition and per-server gauges from the replicas' state (the same
/// report the manager gets), and leader changes since `last_leaders`.
pub fn replicas(
    status: &[ReplicaStatus],
    sessions: u64,
    last_leaders: &mut std::collections::BTreeMap<u64, Option<u64>>,
) {
    let (mut leaders, mut keys, mut bytes) = (0u64, 0u64, 0u64);
    let mut seen = std::collections::BTreeMap::new();
    for r in status {
        let p = r.partition.to_string();
        let is_leader = r.role == ReplicaRole::Leader;
        leaders += is_leader as u64;
        keys += r.keys;
        bytes += r.bytes;
        gauge!("distkv_raft_is_leader", "partition" => p.clone()).set(is_leader as u8 as f64);
        gauge!("distkv_raft_term", "partition" => p.clone()).set(r.term as f64);
        gauge!("distkv_raft_commit_index", "partition" => p.clone()).set(r.commit as f64);
        gauge!("distkv_raft_applied_index", "partition" => p.clone()).set(r.applied as f64);
        gauge!("distkv_partition_keys", "partition" => p.clone()).set(r.keys as f64);
        gauge!("distkv_partition_bytes", "partition" => p).set(r.bytes as f64);
        if let Some(before) = last_leaders.get(&r.partition) {
            if *before != r.leader && r.leader.is_some() {
                counter!("distkv_raft_leader_changes_total").increment(1);
            }
        }
        seen.insert(r.partition, r.leader);
    }
    *last_leaders = seen;
    gauge!("distkv_replicas").set(status.len() as f64);
    gauge!("distkv_leaders").set(leaders as f64);
    gauge!("distkv_keys").set(keys as f64);
    gauge!("distkv_stored_bytes").set(bytes as f64);
    gauge!("distkv_sessions").set(sessions as f64);
}
