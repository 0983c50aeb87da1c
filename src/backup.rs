//! Consistent backups of a whole cluster, and restores (`admin backup`,
//! `admin restore`; README "Backup and restore").
//!
//! A backup is one command of EXPORTs, one per table, run as a transaction:
//! every partition keeps a copy of its data as of the commit point
//! (`kv::export`), so the copies together are the cluster at one instant,
//! strictly serializable like any command: every write acknowledged before
//! the backup began is in it, none that began after it ended is, and each
//! transaction is in it whole or not at all. The backup then pages through
//! the copies while writes go on, and writes a directory:
//!
//! ```text
//!   manifest.json          what is in it (written last: no manifest, no backup)
//!   <table>.rows           "DKVROWS1", then per key: number (u64 LE),
//!                          value length (u32 LE), value; ascending keys
//! ```
//! The manifest gives each file's size, SHA-256, keys and bytes. A restore
//! checks all of them before it writes anything, then PUTs the rows into a
//! cluster whose tables exist and are empty, and checks the counts again.

use crate::client::{Client, ClientError, Session};
use crate::key::Key;
use crate::kv::TxnId;
use crate::map::PartitionMap;
use crate::op::{ExportPart, Op, OpResult, VALUE_LEN_MAX};
use crate::rt::Runtime;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The manifest's `format`.
pub const FORMAT: &str = "distkv-backup 1";
pub const MANIFEST: &str = "manifest.json";
const ROWS_MAGIC: &[u8; 8] = b"DKVROWS1";
/// Bytes asked for per page of an export.
const PAGE_BYTES: u32 = 1024 * 1024;
/// How long one page may take, retries included.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// A restore's commands: at most this many PUTs or bytes each.
const RESTORE_BATCH_OPS: usize = 256;
const RESTORE_BATCH_BYTES: usize = 1024 * 1024;
/// Attempts of one restore command that came back unavailable or unknown
/// (a PUT of the same value again is harmless).
const RESTORE_ATTEMPTS: usize = 10;
/// How often a backup keeps the copies it has not read yet alive on every
/// replica (they go after a session TTL, 5 minutes by default, unread).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);
/// How long a keepalive or release waits for each replica.
const TOUCH_WAIT: Duration = Duration::from_secs(2);

/// What a backup directory holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The version of distkv that wrote it.
    pub distkv_version: String,
    /// The backup's instant: the client's clock (ms since the Unix epoch)
    /// when its transaction was known committed. The data is the cluster's
    /// at a moment between `started_unix_ms` and this.
    pub taken_unix_ms: u64,
    /// When the backup was asked for, and when its files were complete.
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    /// The partition map's epoch the backup routed by.
    pub map_epoch: u64,
    pub tables: Vec<TableEntry>,
}

/// One table of a backup and its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    /// The table's initial key space in the backed-up cluster (`--tables`).
    pub key_space: u64,
    /// Partitions it had at the backup.
    pub partitions: usize,
    pub keys: u64,
    /// Value bytes plus 8 per key (as partitions count them).
    pub bytes: u64,
    /// File name in the directory, its size and SHA-256 (hex).
    pub file: String,
    pub file_bytes: u64,
    pub sha256: String,
}

/// Progress of a long backup or restore: keys done of keys in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub keys_done: u64,
    pub keys_total: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_bytes(value: &[u8]) -> u64 {
    value.len() as u64 + 8
}

/// Writes a table's rows file, hashing as it goes.
pub struct RowsWriter {
    out: BufWriter<File>,
    digest: ring::digest::Context,
    file_bytes: u64,
    keys: u64,
    bytes: u64,
    last: Option<u64>,
}

impl RowsWriter {
    pub fn create(path: &Path) -> io::Result<RowsWriter> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut w = RowsWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            file_bytes: 0,
            keys: 0,
            bytes: 0,
            last: None,
        };
        w.write(ROWS_MAGIC)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.digest.update(bytes);
        self.file_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends one row; keys must ascend.
    pub fn push(&mut self, num: u64, value: &[u8]) -> io::Result<()> {
        if self.last.is_some_and(|last| last >= num) {
            return Err(io::Error::other(format!(
                "rows out of order: key number {num} after {}",
                self.last.unwrap_or(0)
            )));
        }
        self.last = Some(num);
        self.write(&num.to_le_bytes())?;
        self.write(&(value.len() as u32).to_le_bytes())?;
        self.write(value)?;
        self.keys += 1;
        self.bytes += entry_bytes(value);
        Ok(())
    }

    /// Flushes and syncs the file: its size, SHA-256, keys and bytes.
    pub fn finish(mut self) -> io::Result<(u64, String, u64, u64)> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let sha = hex(self.digest.finish().as_ref());
        Ok((self.file_bytes, sha, self.keys, self.bytes))
    }
}

/// Reads a table's rows file back, checking its form as it goes.
pub struct RowsReader {
    input: BufReader<File>,
    path: PathBuf,
    digest: ring::digest::Context,
    file_bytes: u64,
    last: Option<u64>,
}

impl RowsReader {
    pub fn open(path: &Path) -> Result<RowsReader, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut r = RowsReader {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            file_bytes: 0,
            last: None,
        };
        let mut magic = [0u8; 8];
        if r.read_exact(&mut magic)? != 8 || &magic != ROWS_MAGIC {
            return Err(format!("{} is not a distkv rows file", path.display()));
        }
        Ok(r)
    }

    /// Reads exactly `buf.len()` bytes, or fewer only at the end of the file.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
            }
        }
        self.digest.update(&buf[..got]);
        self.file_bytes += got as u64;
        Ok(got)
    }

    /// The next row, `None` at the end.
    pub fn next_row(&mut self) -> Result<Option<(u64, Vec<u8>)>, String> {
        let mut head = [0u8; 12];
        match self.read_exact(&mut head)? {
            0 => return Ok(None),
            12 => {}
            _ => return Err(self.truncated()),
        }
        let num = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > VALUE_LEN_MAX {
            return Err(format!(
                "{}: key number {num} has a value of {len} bytes (1 to {VALUE_LEN_MAX})",
                self.path.display()
            ));
        }
        if self.last.is_some_and(|last| last >= num) {
            return Err(format!(
                "{}: key numbers out of order ({num} after {})",
                self.path.display(),
                self.last.unwrap_or(0)
            ));
        }
        self.last = Some(num);
        let mut value = vec![0u8; len];
        if self.read_exact(&mut value)? != len {
            return Err(self.truncated());
        }
        Ok(Some((num, value)))
    }

    fn truncated(&self) -> String {
        format!("{} is truncated", self.path.display())
    }

    /// After the last row: the file's size and SHA-256.
    pub fn finish(self) -> (u64, String) {
        (self.file_bytes, hex(self.digest.finish().as_ref()))
    }
}

/// Reads a backup's manifest and checks every file against it (size,
/// SHA-256, form, keys and bytes), reading each file once.
pub fn verify(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {}: {e} (a backup directory has one; without it the backup did not finish)",
            path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a distkv backup manifest: {e}", path.display()))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "{} has format '{}'; this distkv reads '{FORMAT}'",
            path.display(),
            manifest.format
        ));
    }
    for t in &manifest.tables {
        if !crate::key::is_valid_table_name(&t.name) || t.file != format!("{}.rows", t.name) {
            return Err(format!(
                "the manifest names table '{}' with file '{}'",
                t.name, t.file
            ));
        }
        let mut reader = RowsReader::open(&dir.join(&t.file))?;
        let (mut keys, mut bytes) = (0u64, 0u64);
        while let Some((_, value)) = reader.next_row()? {
            keys += 1;
            bytes += entry_bytes(&value);
        }
        let (file_bytes, sha) = reader.finish();
        if file_bytes != t.file_bytes || sha != t.sha256 {
            return Err(format!(
                "{} is damaged: {file_bytes} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                t.file, t.file_bytes, t.sha256
            ));
        }
        if keys != t.keys || bytes != t.bytes {
            return Err(format!(
                "{} holds {keys} keys ({bytes} bytes), the manifest says {} ({})",
                t.file, t.keys, t.bytes
            ));
        }
    }
    Ok(manifest)
}

/// Every row of one table of a verified backup (for tests and tools).
pub fn read_rows(dir: &Path, table: &TableEntry) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut reader = RowsReader::open(&dir.join(&table.file))?;
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row()? {
        rows.push(row);
    }
    Ok(rows)
}

/// One EXPORT per table of `map`, over all of its keys.
fn export_ops(map: &PartitionMap) -> Vec<Op> {
    map.tables
        .keys()
        .map(|name| Op::Export {
            start: Key::new(name.clone(), 0),
            end: Key::new(name.clone(), u64::MAX),
        })
        .collect()
}

/// Runs one EXPORT command of every table: the parts per table, and the
/// attempt that committed (which names the copies).
async fn export_all<R: Runtime>(
    session: &mut Session<R>,
    ops: Vec<Op>,
) -> Result<(Vec<Vec<ExportPart>>, TxnId), String> {
    let results = session
        .execute(ops)
        .await
        .map_err(|e| format!("the backup's transaction failed: {e}"))?;
    let txn = session
        .last_txn()
        .ok_or("the EXPORT command did not run as a transaction")?;
    let parts = results
        .into_iter()
        .map(|r| match r {
            OpResult::Export(parts) => Ok(parts),
            other => Err(format!("an EXPORT came back with {other:?}")),
        })
        .collect::<Result<_, String>>()?;
    Ok((parts, txn))
}

/// Drops every copy an EXPORT attempt left (best effort: the rest expire).
async fn release_all<R: Runtime>(client: &Client<R>, parts: &[Vec<ExportPart>], txn: TxnId) {
    for part in parts.iter().flatten() {
        client
            .export_touch(part.partition, txn, true, TOUCH_WAIT)
            .await;
    }
}

/// Takes a consistent backup of every table into `dir` (created; it must
/// not exist or be empty). `progress` is called after every page.
pub async fn backup<R: Runtime>(
    client: &Client<R>,
    dir: &Path,
    now_unix_ms: impl Fn() -> u64,
    mut progress: impl FnMut(Progress),
) -> Result<Manifest, String> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} is not empty; back up into a new directory",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = backup_into(client, dir, now_unix_ms, &mut progress).await;
    if result.is_err() {
        // No manifest was written: remove the partial files, so the
        // directory can be used again.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    result
}

async fn backup_into<R: Runtime>(
    client: &Client<R>,
    dir: &Path,
    now_unix_ms: impl Fn() -> u64,
    progress: &mut impl FnMut(Progress),
) -> Result<Manifest, String> {
    let started_unix_ms = now_unix_ms();
    let map = client.map();
    if map.tables.is_empty() {
        return Err("the cluster has no tables".into());
    }
    let mut session = client.session();
    let (parts, txn) = export_all(&mut session, export_ops(&map)).await?;
    let taken_unix_ms = now_unix_ms();
    let result = write_tables(client, dir, &map, &parts, txn, progress).await;
    release_all(client, &parts, txn).await;
    let tables = result?;
    let manifest = Manifest {
        format: FORMAT.into(),
        distkv_version: env!("CARGO_PKG_VERSION").into(),
        taken_unix_ms,
        started_unix_ms,
        finished_unix_ms: now_unix_ms(),
        map_epoch: map.epoch,
        tables,
    };
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

/// Pages through every copy into one rows file per table.
async fn write_tables<R: Runtime>(
    client: &Client<R>,
    dir: &Path,
    map: &PartitionMap,
    parts: &[Vec<ExportPart>],
    txn: TxnId,
    progress: &mut impl FnMut(Progress),
) -> Result<Vec<TableEntry>, String> {
    let keys_total = parts.iter().flatten().map(|p| p.keys).sum();
    let mut keys_done = 0u64;
    let mut tables = Vec::new();
    let all: Vec<u64> = parts.iter().flatten().map(|p| p.partition).collect();
    let mut next_keepalive = client.now() + KEEPALIVE_EVERY;
    let mut read = 0usize;
    for ((name, table), parts) in map.tables.iter().zip(parts) {
        let file = format!("{name}.rows");
        let mut out = RowsWriter::create(&dir.join(&file))
            .map_err(|e| format!("cannot create {}: {e}", dir.join(&file).display()))?;
        for part in parts {
            let (mut keys, mut bytes) = (0u64, 0u64);
            let mut from = 0u64;
            loop {
                if client.now() >= next_keepalive {
                    for &p in &all[read..] {
                        client.export_touch(p, txn, false, TOUCH_WAIT).await;
                    }
                    next_keepalive = client.now() + KEEPALIVE_EVERY;
                }
                let deadline = client.now() + PAGE_TIMEOUT;
                let page = client
                    .export_page(part.partition, txn, from, u64::MAX, PAGE_BYTES, deadline)
                    .await
                    .map_err(|e| {
                        format!("reading table {name}: {e}; the backup must start over")
                    })?;
                for row in &page.rows {
                    out.push(row.num, &row.value)
                        .map_err(|e| format!("writing {file}: {e}"))?;
                    keys += 1;
                    bytes += entry_bytes(&row.value);
                }
                keys_done += page.rows.len() as u64;
                progress(Progress {
                    keys_done,
                    keys_total,
                });
                match page.rows.last() {
                    Some(last) if page.more && last.num < u64::MAX => from = last.num + 1,
                    _ => break,
                }
            }
            if (keys, bytes) != (part.keys, part.bytes) {
                return Err(format!(
                    "partition {} of table {name} sent {keys} keys ({bytes} bytes) of its copy of {} ({}); the backup must start over",
                    part.partition, part.keys, part.bytes
                ));
            }
            read += 1;
        }
        let (file_bytes, sha256, keys, bytes) =
            out.finish().map_err(|e| format!("writing {file}: {e}"))?;
        tables.push(TableEntry {
            name: name.clone(),
            key_space: table.key_space,
            partitions: parts.len(),
            keys,
            bytes,
            file,
            file_bytes,
            sha256,
        });
    }
    Ok(tables)
}

/// Writes the manifest atomically (a temporary file, synced, renamed).
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), String> {
    let text = serde_json::to_string_pretty(manifest).expect("a manifest serializes");
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(MANIFEST))?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", dir.join(MANIFEST).display()))
}

/// What a restore did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    pub tables: usize,
    pub keys: u64,
    pub bytes: u64,
}

/// The rows of every table of a backup as restore commands: runs of PUTs
/// that fall in one partition of the target's map.
struct Batches<'a> {
    dir: &'a Path,
    map: &'a PartitionMap,
    tables: std::slice::Iter<'a, TableEntry>,
    current: Option<(String, RowsReader)>,
    /// A row read but not yet batched (it starts the next batch).
    held: Option<(u64, Vec<u8>)>,
}

impl Batches<'_> {
    fn next_batch(&mut self) -> Result<Option<Vec<Op>>, String> {
        loop {
            let Some((table, reader)) = self.current.as_mut() else {
                let Some(t) = self.tables.next() else {
                    return Ok(None);
                };
                self.current = Some((t.name.clone(), RowsReader::open(&self.dir.join(&t.file))?));
                continue;
            };
            let mut ops = Vec::new();
            let mut bytes = 0usize;
            let mut partition = None;
            loop {
                let row = match self.held.take() {
                    Some(row) => Some(row),
                    None => reader.next_row()?,
                };
                let Some((num, value)) = row else {
                    break;
                };
                let key = Key::new(table.clone(), num);
                let p = self.map.partition_of(&key).map_err(|e| e.to_string())?.id;
                if !ops.is_empty()
                    && (partition != Some(p)
                        || ops.len() >= RESTORE_BATCH_OPS
                        || bytes + value.len() > RESTORE_BATCH_BYTES)
                {
                    self.held = Some((num, value));
                    return Ok(Some(ops));
                }
                partition = Some(p);
                bytes += value.len();
                ops.push(Op::Put { key, value });
            }
            self.current = None;
            if !ops.is_empty() {
                return Ok(Some(ops));
            }
        }
    }
}

/// Restores a backup into the cluster `client` reaches: checks the backup
/// (`verify`), that every table of it exists there and is empty, writes
/// every row with `workers` sessions at once, and checks the counts.
pub async fn restore<R: Runtime>(
    client: &Client<R>,
    dir: &Path,
    workers: usize,
    progress: impl Fn(Progress),
) -> Result<RestoreSummary, String> {
    let manifest = verify(dir)?;
    let map = client.map();
    let missing: Vec<&str> = manifest
        .tables
        .iter()
        .filter(|t| !map.tables.contains_key(&t.name))
        .map(|t| t.name.as_str())
        .collect();
    if !missing.is_empty() {
        let wanted: Vec<String> = manifest
            .tables
            .iter()
            .map(|t| format!("{}={}", t.name, t.key_space))
            .collect();
        return Err(format!(
            "the cluster has no table {}; start its manager with --tables {}",
            missing.join(", "),
            wanted.join(",")
        ));
    }
    let counts = table_counts(client, &manifest).await?;
    if let Some((name, (keys, _))) = counts.iter().find(|(_, (keys, _))| *keys > 0) {
        return Err(format!(
            "table {name} already holds {keys} keys; restore into a cluster whose tables are empty"
        ));
    }
    let keys_total = manifest.tables.iter().map(|t| t.keys).sum();
    let batches = Mutex::new(Batches {
        dir,
        map: &map,
        tables: manifest.tables.iter(),
        current: None,
        held: None,
    });
    let done = AtomicU64::new(0);
    let worker = || async {
        let mut session = client.session();
        loop {
            let ops = match batches.lock().unwrap().next_batch()? {
                Some(ops) => ops,
                None => return Ok::<(), String>(()),
            };
            let n = ops.len() as u64;
            put_batch(&mut session, ops).await?;
            let keys_done = done.fetch_add(n, Ordering::Relaxed) + n;
            progress(Progress {
                keys_done,
                keys_total,
            });
        }
    };
    let outcomes = crate::client::join_all((0..workers.max(1)).map(|_| worker()).collect()).await;
    outcomes.into_iter().collect::<Result<Vec<()>, String>>()?;
    let counts = table_counts(client, &manifest).await?;
    for t in &manifest.tables {
        let (keys, bytes) = counts[&t.name];
        if (keys, bytes) != (t.keys, t.bytes) {
            return Err(format!(
                "table {} holds {keys} keys ({bytes} bytes) after the restore, the backup {} ({}): was it written to meanwhile?",
                t.name, t.keys, t.bytes
            ));
        }
    }
    Ok(RestoreSummary {
        tables: manifest.tables.len(),
        keys: manifest.tables.iter().map(|t| t.keys).sum(),
        bytes: manifest.tables.iter().map(|t| t.bytes).sum(),
    })
}

/// Runs one restore command, again if its outcome is not known.
async fn put_batch<R: Runtime>(session: &mut Session<R>, ops: Vec<Op>) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..RESTORE_ATTEMPTS {
        match session.execute(ops.clone()).await {
            Ok(_) => return Ok(()),
            Err(e @ (ClientError::Unavailable(_) | ClientError::UnknownOutcome(_))) => {
                last = e.to_string();
            }
            Err(e) => return Err(format!("restoring {}: {e}", ops[0].table())),
        }
    }
    Err(format!(
        "restoring {}: {last} ({RESTORE_ATTEMPTS} attempts)",
        ops[0].table()
    ))
}

/// Keys and bytes each of the manifest's tables holds in the cluster now
/// (one EXPORT command; its copies are dropped unused after a session TTL).
async fn table_counts<R: Runtime>(
    client: &Client<R>,
    manifest: &Manifest,
) -> Result<std::collections::BTreeMap<String, (u64, u64)>, String> {
    let ops: Vec<Op> = manifest
        .tables
        .iter()
        .map(|t| Op::Export {
            start: Key::new(t.name.clone(), 0),
            end: Key::new(t.name.clone(), u64::MAX),
        })
        .collect();
    let (parts, txn) = export_all(&mut client.session(), ops).await?;
    release_all(client, &parts, txn).await;
    Ok(manifest
        .tables
        .iter()
        .zip(parts)
        .map(|(t, parts)| {
            let keys = parts.iter().map(|p| p.keys).sum();
            let bytes = parts.iter().map(|p| p.bytes).sum();
            (t.name.clone(), (keys, bytes))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_files_round_trip_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.rows");
        let mut w = RowsWriter::create(&path).unwrap();
        w.push(1, b"a").unwrap();
        w.push(7, &[0, 255, 10]).unwrap();
        assert!(w.push(7, b"x").is_err(), "keys must ascend");
        let (file_bytes, sha256, keys, bytes) = w.finish().unwrap();
        assert_eq!((keys, bytes), (2, 1 + 8 + 3 + 8));
        let entry = TableEntry {
            name: "t".into(),
            key_space: 10,
            partitions: 1,
            keys,
            bytes,
            file: "t.rows".into(),
            file_bytes,
            sha256,
        };
        let manifest = Manifest {
            format: FORMAT.into(),
            distkv_version: "test".into(),
            taken_unix_ms: 2,
            started_unix_ms: 1,
            finished_unix_ms: 3,
            map_epoch: 1,
            tables: vec![entry.clone()],
        };
        write_manifest(dir.path(), &manifest).unwrap();
        assert_eq!(verify(dir.path()).unwrap(), manifest);
        assert_eq!(
            read_rows(dir.path(), &entry).unwrap(),
            vec![(1, b"a".to_vec()), (7, vec![0, 255, 10])]
        );
        // One flipped byte of a value.
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.contains("is damaged"), "{e}");
        // Cut short inside a row.
        std::fs::write(&path, &raw[..raw.len() - 2]).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // No manifest: no backup.
        std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        let e = verify(dir.path()).unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
    }
}
