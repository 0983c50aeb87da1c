//! Partition snapshots: a partition's whole state at one log position.
//!
//! # On-disk format (integers little-endian)
//!
//! File `snap-<partition, 20 digits>-<lsn, 20 digits>.snap` in the data directory:
//!
//! ```text
//!   0       8         12          20    28         36         40        44
//!   | magic | version | partition | lsn | body_len | body_crc | hdr_crc | body (body_len B) |
//!   | 8 B   | u32     | u64       | u64 | u64      | u32      | u32     |                   |
//!   magic = "DKVSNAP\n", hdr_crc = crc32(bytes 0..40), body_crc = crc32(body)
//!   body  = bincode (varint) of `GroupSnapshot`: the replica's state
//!           machine (the partition's range, its key/value pairs in key
//!           order, its client session table) through Raft index
//!           `meta.index`, the snapshot meta (index, term, membership), the
//!           Raft hard state, and the log entries after `meta.index`
//! ```
//!
//! File `recv-<partition, 20 digits>-<index, 20 digits>.snap`: a snapshot a
//! follower received from its leader (InstallSnapshot), referred to by a
//! small `SnapshotFile` log record instead of being logged whole:
//!
//! ```text
//!   0       8         12          20      28         36         40        44
//!   | magic | version | partition | index | body_len | body_crc | hdr_crc | body (body_len B) |
//!   magic = "DKVRECV\n", version = 1, hdr_crc = crc32(bytes 0..40), body_crc = crc32(body)
//!   body  = the state machine's bytes as the leader sent them ([`encode_store`])
//!           at Raft index `index`
//! ```
//!
//! # Writing
//! Body and header go to `<name>.tmp`, which is synced, renamed to `<name>`,
//! and the directory is synced: a crash leaves either no snapshot or a whole
//! one under the final name. Only then may the log before `lsn` be purged
//! (a checkpoint), or the record that refers to the file be logged (a
//! received snapshot).

use super::GroupSnapshot;
use crate::kv::PartitionStore;
use crate::rt::Disk;
use bincode::Options;
use std::path::{Path, PathBuf};

use super::wal::Lsn;

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"DKVSNAP\n";
pub const SNAPSHOT_VERSION: u32 = 5;
pub const SNAPSHOT_HEADER_LEN: usize = 44;
pub const RECEIVED_MAGIC: &[u8; 8] = b"DKVRECV\n";
pub const RECEIVED_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {reason}; remove it only if the write-ahead log still covers its partition")]
    Corrupt { path: PathBuf, reason: String },
}

pub fn snapshot_name(partition: u64, lsn: Lsn) -> String {
    format!("snap-{partition:020}-{lsn:020}.snap")
}

/// `(partition, lsn)` of a snapshot file name.
pub fn parse_snapshot_name(name: &str) -> Option<(u64, Lsn)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (p, l) = rest.split_once('-')?;
    Some((p.parse().ok()?, l.parse().ok()?))
}

fn body_options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(1 << 40)
}

/// Encodes a snapshot file's bytes.
pub fn encode_snapshot(partition: u64, lsn: Lsn, state: &GroupSnapshot) -> Vec<u8> {
    let body = body_options().serialize(state).expect("state serializes");
    frame_snapshot(partition, lsn, &body)
}

/// Puts the header (magic, version, partition, lsn, length, checksums) in
/// front of an already-encoded `body`.
pub fn frame_snapshot(partition: u64, lsn: Lsn, body: &[u8]) -> Vec<u8> {
    frame(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, partition, lsn, body)
}

/// The header both file kinds share, in front of `body`.
fn frame(magic: &[u8; 8], version: u32, partition: u64, position: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let hdr_crc = crc32fast::hash(&out[0..40]);
    out.extend_from_slice(&hdr_crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks the shared header and the body's length and checksum:
/// `(partition, position, body)`.
fn unframe<'a>(
    magic: &[u8; 8],
    version: u32,
    bytes: &'a [u8],
) -> Result<(u64, u64, &'a [u8]), String> {
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(format!("{} bytes is shorter than the header", bytes.len()));
    }
    if &bytes[0..8] != magic {
        return Err("bad magic".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    if crc32fast::hash(&bytes[0..40]) != u32_at(40) {
        return Err("header checksum mismatch".into());
    }
    if u32_at(8) != version {
        return Err(format!("format version {} not supported", u32_at(8)));
    }
    let (partition, position, body_len) = (u64_at(12), u64_at(20), u64_at(28));
    let body = &bytes[SNAPSHOT_HEADER_LEN..];
    if body.len() as u64 != body_len {
        return Err(format!(
            "body is {} bytes, header says {body_len}",
            body.len()
        ));
    }
    if crc32fast::hash(body) != u32_at(36) {
        return Err("body checksum mismatch".into());
    }
    Ok((partition, position, body))
}

/// Decodes and verifies a snapshot file's bytes: `(partition, lsn, state)`.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, Lsn, GroupSnapshot), String> {
    let (partition, lsn, body) = unframe(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, bytes)?;
    let state: GroupSnapshot = body_options()
        .reject_trailing_bytes()
        .deserialize(body)
        .map_err(|e| format!("body does not decode: {e}"))?;
    if !state.store.range().is_valid_range() {
        return Err("the partition's range is empty or has no replicas".into());
    }
    if state.store.range().id != partition {
        return Err(format!(
            "body is partition {}, header says {partition}",
            state.store.range().id
        ));
    }
    if !state
        .tail
        .iter()
        .zip(state.meta.index + 1..)
        .all(|(e, i)| e.index == i)
    {
        return Err("log entries after the snapshot are not contiguous".into());
    }
    Ok((partition, lsn, state))
}

/// Encodes a replica's state machine (the data of a Raft snapshot).
pub fn encode_store(store: &PartitionStore) -> Vec<u8> {
    body_options().serialize(store).expect("state serializes")
}

/// Decodes [`encode_store`]'s bytes, checking the range.
pub fn decode_store(bytes: &[u8]) -> Result<PartitionStore, String> {
    let store: PartitionStore = body_options()
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| format!("snapshot data does not decode: {e}"))?;
    if !store.range().is_valid_range() {
        return Err("the snapshot's partition range is empty or has no replicas".into());
    }
    Ok(store)
}

/// Writes a snapshot durably (temp file, sync, rename, sync dir).
pub async fn write_snapshot<D: Disk>(
    disk: &D,
    dir: &Path,
    partition: u64,
    lsn: Lsn,
    state: &GroupSnapshot,
) -> Result<PathBuf, SnapshotError> {
    let bytes = encode_snapshot(partition, lsn, state);
    write_durably(disk, dir, &snapshot_name(partition, lsn), &bytes).await
}

pub fn received_name(partition: u64, index: u64) -> String {
    format!("recv-{partition:020}-{index:020}.snap")
}

/// `(partition, index)` of a received snapshot's file name.
pub fn parse_received_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("recv-")?.strip_suffix(".snap")?;
    let (p, i) = rest.split_once('-')?;
    Some((p.parse().ok()?, i.parse().ok()?))
}

/// Writes a snapshot received from the leader (the state machine's bytes
/// at Raft `index`) durably to its own file.
pub async fn write_received<D: Disk>(
    disk: &D,
    dir: &Path,
    partition: u64,
    index: u64,
    data: &[u8],
) -> Result<PathBuf, SnapshotError> {
    let bytes = frame(RECEIVED_MAGIC, RECEIVED_VERSION, partition, index, data);
    write_durably(disk, dir, &received_name(partition, index), &bytes).await
}

/// Reads and verifies a received snapshot's file: the state machine's bytes.
pub async fn read_received<D: Disk>(
    disk: &D,
    dir: &Path,
    partition: u64,
    index: u64,
) -> Result<Vec<u8>, SnapshotError> {
    let path = dir.join(received_name(partition, index));
    let mut bytes = disk.read(&path).await.map_err(|source| SnapshotError::Io {
        path: path.clone(),
        source,
    })?;
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.clone(),
        reason,
    };
    let (p, i, _) = unframe(RECEIVED_MAGIC, RECEIVED_VERSION, &bytes).map_err(corrupt)?;
    if (p, i) != (partition, index) {
        return Err(corrupt(format!(
            "contents are partition {p} at index {i}, name says {partition} at {index}"
        )));
    }
    bytes.drain(..SNAPSHOT_HEADER_LEN);
    Ok(bytes)
}

/// Removes the received snapshots of `partition` at or before `index`
/// (a checkpoint at or after `index` is durable, so no log record that
/// recovery replays refers to them).
pub async fn remove_received_through<D: Disk>(
    disk: &D,
    dir: &Path,
    partition: u64,
    index: u64,
) -> Result<(), SnapshotError> {
    remove_where(disk, dir, |name| {
        parse_received_name(name).is_some_and(|(p, i)| p == partition && i <= index)
    })
    .await
    .map(|_| ())
}

/// Writes `bytes` as `dir/name` so that a crash leaves no file or all of it:
/// `name.tmp`, sync, rename, sync the directory.
async fn write_durably<D: Disk>(
    disk: &D,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SnapshotError::Io { path: p, source }
    };
    disk.truncate(&tmp, 0).await.map_err(io(&tmp))?;
    disk.append(&tmp, bytes).await.map_err(io(&tmp))?;
    disk.sync(&tmp).await.map_err(io(&tmp))?;
    disk.rename(&tmp, &path).await.map_err(io(&path))?;
    disk.sync_dir(dir).await.map_err(io(dir))?;
    Ok(path)
}

/// The newest snapshot of every partition in `dir`, verified. Leftover
/// `.tmp` files (a crash mid-write) are removed. A corrupt newest snapshot is
/// an error, never silently skipped.
pub async fn load_snapshots<D: Disk>(
    disk: &D,
    dir: &Path,
) -> Result<Vec<(Lsn, GroupSnapshot)>, SnapshotError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SnapshotError::Io { path: p, source }
    };
    disk.create_dir_all(dir).await.map_err(io(dir))?;
    let mut newest: std::collections::BTreeMap<u64, (Lsn, String)> = Default::default();
    for name in disk.list(dir).await.map_err(io(dir))? {
        if name.ends_with(".tmp") {
            let path = dir.join(&name);
            tracing::info!(path = %path.display(), "removing unfinished snapshot");
            disk.remove(&path).await.map_err(io(&path))?;
            continue;
        }
        if let Some((partition, lsn)) = parse_snapshot_name(&name) {
            if newest.get(&partition).is_none_or(|(l, _)| *l < lsn) {
                newest.insert(partition, (lsn, name));
            }
        }
    }
    let mut out = Vec::with_capacity(newest.len());
    for (partition, (lsn, name)) in newest {
        let path = dir.join(&name);
        let bytes = disk.read(&path).await.map_err(io(&path))?;
        let (p, l, state) = decode_snapshot(&bytes).map_err(|reason| SnapshotError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        if (p, l) != (partition, lsn) {
            return Err(SnapshotError::Corrupt {
                path,
                reason: format!(
                    "contents are partition {p} at {l}, name says {partition} at {lsn}"
                ),
            });
        }
        out.push((lsn, state));
    }
    Ok(out)
}

/// Removes snapshots of `partition` older than `keep_lsn`.
pub async fn remove_older_snapshots<D: Disk>(
    disk: &D,
    dir: &Path,
    partition: u64,
    keep_lsn: Lsn,
) -> Result<(), SnapshotError> {
    remove_where(disk, dir, |name| {
        parse_snapshot_name(name).is_some_and(|(p, lsn)| p == partition && lsn < keep_lsn)
    })
    .await
    .map(|_| ())
}

/// Removes the snapshots, taken at or before `lsn`, of every partition not
/// in `kept` (replicas dropped since).
pub async fn remove_snapshots_except<D: Disk>(
    disk: &D,
    dir: &Path,
    kept: &std::collections::BTreeSet<u64>,
    lsn: Lsn,
) -> Result<(), SnapshotError> {
    let removed = remove_where(disk, dir, |name| {
        parse_snapshot_name(name).is_some_and(|(p, l)| !kept.contains(&p) && l <= lsn)
    })
    .await?;
    // Durably gone before the caller purges the log that says the
    // partitions were dropped: else a crash could bring a snapshot back
    // with the log after it missing.
    if removed > 0 {
        disk.sync_dir(dir)
            .await
            .map_err(|source| SnapshotError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// Removes every file of `dir` whose name `doomed` picks; returns how many
/// (the removals are durable only after the directory is synced).
async fn remove_where<D: Disk>(
    disk: &D,
    dir: &Path,
    doomed: impl Fn(&str) -> bool,
) -> Result<usize, SnapshotError> {
    let names = disk.list(dir).await.map_err(|source| SnapshotError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut removed = 0;
    for name in names.iter().filter(|n| doomed(n)) {
        let path = dir.join(name);
        disk.remove(&path)
            .await
            .map_err(|source| SnapshotError::Io { path, source })?;
        removed += 1;
    }
    Ok(removed)
}
