//! The write-ahead log: segmented files of checksummed records, shared by
//! every partition (later: every Raft group) on a server, so one fsync makes
//! everyone's appends durable.
//!
//! # On-disk format (all integers little-endian)
//!
//! A segment is a file `wal-<first_lsn, 20 digits>.log` in the log directory:
//!
//! ```text
//!  segment header, 24 bytes
//!   0       8         12          20        24
//!   | magic | version | first_lsn | hdr_crc |
//!   | 8 B   | u32     | u64       | u32     |      magic = "DKVWAL\r\n"
//!                                                  hdr_crc = crc32(bytes 0..20)
//!  then records, back to back:
//!   0       4     12      20     21         25            29
//!   | len   | lsn | group | kind | head_crc | payload_crc | payload (len B) |
//!   | u32   | u64 | u64   | u8   | u32      | u32         |                 |
//!   head_crc    = crc32(bytes 0..21)  -- covers the length: a torn or flipped
//!                                        length is caught before it is used
//!   payload_crc = crc32(payload)
//! ```
//!
//! LSNs (log sequence numbers) start at 1 and increase by one per record,
//! across segments; a segment's `first_lsn` is the LSN of its first record.
//!
//! # Recovery rules
//!
//! Reading stops at the first record that fails a check (short header, bad
//! head crc, length over the limit, payload past the end of file, bad payload
//! crc, LSN out of sequence). Then:
//! - in the **last** segment, if no valid record follows anywhere after that
//!   point, the bad bytes are the torn tail of the last write before a crash:
//!   the file is truncated there (and synced), with a warning;
//! - otherwise (a valid record follows, or the segment is not the last) the
//!   log is corrupt in the middle: recovery fails with an error naming the
//!   file and offset. It never silently drops data that was acknowledged.
//!
//! # What we assume of the disk
//! - `sync(file)` returning Ok means the file's written bytes survive a power
//!   cut; `sync_dir` the same for names in a directory.
//! - Unsynced bytes may be lost, kept in part, or torn (garbage) — only at the
//!   end of what was written since the last sync.
//! - After a failed write or sync, nothing is known about unsynced bytes: the
//!   log refuses further use (it is "poisoned") and the server must recover
//!   from disk (fsyncgate).

use crate::rt::Disk;
use std::path::{Path, PathBuf};

pub type Lsn = u64;

pub const SEGMENT_MAGIC: &[u8; 8] = b"DKVWAL\r\n";
pub const SEGMENT_VERSION: u32 = 4;
pub const SEGMENT_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 29;
/// Largest record payload (16 MiB).
pub const RECORD_PAYLOAD_LEN_MAX: usize = 16 * 1024 * 1024;
/// Default size at which a new segment is started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// One log record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// Which partition (Raft group) it belongs to.
    pub group: u64,
    /// Record type, defined by the writer (e.g. "command", "host partition").
    pub kind: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "write-ahead log {path} is corrupt at byte offset {offset}: {reason}. \
             This is not a torn tail (valid data follows), so recovery stops rather \
             than drop acknowledged writes. Safe ways on: restore the file from a copy; \
             or, if every partition this server holds has a majority of its replicas \
             up and caught up on other servers, remove this server's data (its \
             --log-path and --db-path) and start it again with the same --node-id: its \
             replicas start empty, take no part in elections until a leader has \
             caught them up, and copy the data from the other replicas. Replace one \
             server of a partition at a time, and let it catch up before the next"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("write-ahead log is unusable after an earlier failure ({0}); restart the server to recover from disk")]
    Poisoned(String),
    #[error("record payload of {0} bytes exceeds the limit of {RECORD_PAYLOAD_LEN_MAX}")]
    TooLarge(usize),
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Encodes one record (header and payload) onto `out`.
pub fn encode_record(out: &mut Vec<u8>, lsn: Lsn, group: u64, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.push(kind);
    let head_crc = crc(&out[start..start + 21]);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes a segment header.
pub fn encode_segment_header(first_lsn: Lsn) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out.extend_from_slice(&first_lsn.to_le_bytes());
    let c = crc(&out);
    out.extend_from_slice(&c.to_le_bytes());
    out
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Parses a segment header; returns its `first_lsn`.
pub fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, String> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header is {} bytes, need {SEGMENT_HEADER_LEN}",
            bytes.len()
        ));
    }
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err("not a distkv log segment (bad magic)".into());
    }
    if crc(&bytes[0..20]) != le_u32(&bytes[20..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = le_u32(&bytes[8..12]);
    if version != SEGMENT_VERSION {
        return Err(format!(
            "segment format version {version} not supported (expected {SEGMENT_VERSION})"
        ));
    }
    Ok(le_u64(&bytes[12..20]))
}

/// Tries to decode one record at the start of `buf`. `Err` says why not.
/// On success returns the record and its encoded length.
pub fn decode_record(buf: &[u8]) -> Result<(Record, usize), String> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(format!("short record header ({} bytes)", buf.len()));
    }
    if crc(&buf[0..21]) != le_u32(&buf[21..25]) {
        return Err("record header checksum mismatch".into());
    }
    let len = le_u32(&buf[0..4]) as usize;
    if len > RECORD_PAYLOAD_LEN_MAX {
        return Err(format!("record length {len} over the limit"));
    }
    let total = RECORD_HEADER_LEN + len;
    let payload = buf
        .get(RECORD_HEADER_LEN..total)
        .ok_or_else(|| format!("record of {len} bytes runs past the end of the file"))?;
    if crc(payload) != le_u32(&buf[25..29]) {
        return Err("record payload checksum mismatch".into());
    }
    Ok((
        Record {
            lsn: le_u64(&buf[4..12]),
            group: le_u64(&buf[12..20]),
            kind: buf[20],
            payload: payload.to_vec(),
        },
        total,
    ))
}

/// Whether any valid record with an LSN above `after` starts anywhere in `buf`
/// (used to tell a torn tail from corruption in the middle).
fn valid_record_follows(buf: &[u8], after: Lsn) -> bool {
    (0..buf.len()).any(|i| matches!(decode_record(&buf[i..]), Ok((r, _)) if r.lsn > after))
}

pub fn segment_name(first_lsn: Lsn) -> String {
    format!("wal-{first_lsn:020}.log")
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

#[derive(Clone, Debug)]
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
    len: u64,
}

/// What [`Wal::open`] found.
pub struct Recovered {
    /// Every record in the log, in LSN order.
    pub records: Vec<Record>,
    /// Bytes cut off a torn tail, if any (already truncated and synced).
    pub truncated_tail_bytes: u64,
}

/// The log writer. Appends are buffered in memory by the caller (see
/// `group_commit`) and handed over as encoded bytes with [`Wal::write_and_sync`].
pub struct Wal<D: Disk> {
    disk: D,
    dir: PathBuf,
    segment_bytes_max: u64,
    segments: Vec<Segment>,
    /// LSN the next record gets.
    next_lsn: Lsn,
    poisoned: Option<String>,
}

impl<D: Disk> Wal<D> {
    /// Opens (or creates) the log in `dir`, recovers it per the rules in the
    /// module docs, and returns every record in it. `first_lsn` is used only
    /// when the log is empty: the LSN its first record should get (one past
    /// what snapshots already cover).
    pub async fn open(
        disk: D,
        dir: &Path,
        segment_bytes_max: u64,
        first_lsn: Lsn,
    ) -> Result<(Wal<D>, Recovered), WalError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalError::Io { path, source }
        };
        disk.create_dir_all(dir).await.map_err(io(dir))?;
        let mut names: Vec<(Lsn, String)> = disk
            .list(dir)
            .await
            .map_err(io(dir))?
            .into_iter()
            .filter_map(|n| parse_segment_name(&n).map(|lsn| (lsn, n)))
            .collect();
        names.sort();
        let mut segments = Vec::with_capacity(names.len());
        let mut records = Vec::new();
        let mut truncated_tail_bytes = 0;
        let mut expected: Option<Lsn> = None;
        let count = names.len();
        for (i, (name_lsn, name)) in names.into_iter().enumerate() {
            let path = dir.join(&name);
            let is_last = i + 1 == count;
            let bytes = disk.read(&path).await.map_err(io(&path))?;
            let corrupt = |offset: usize, reason: String| WalError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                reason,
            };
            let header_lsn = match decode_segment_header(&bytes) {
                Ok(lsn) => lsn,
                // A crash while creating the newest segment can leave its
                // header torn; nothing in it was ever acknowledged.
                Err(_) if is_last && bytes.len() <= SEGMENT_HEADER_LEN => {
                    tracing::warn!(path = %path.display(), "removing torn new log segment");
                    disk.remove(&path).await.map_err(io(&path))?;
                    disk.sync_dir(dir).await.map_err(io(dir))?;
                    truncated_tail_bytes += bytes.len() as u64;
                    continue;
                }
                Err(reason) => return Err(corrupt(0, reason)),
            };
            if header_lsn != name_lsn {
                return Err(corrupt(
                    12,
                    format!("header says first LSN {header_lsn}, name says {name_lsn}"),
                ));
            }
            if let Some(exp) = expected {
                if header_lsn != exp {
                    return Err(corrupt(12, format!("segment starts at LSN {header_lsn}, expected {exp} (a segment is missing)")));
                }
            }
            let mut next = header_lsn;
            let mut offset = SEGMENT_HEADER_LEN;
            while offset < bytes.len() {
                let failure = match decode_record(&bytes[offset..]) {
                    Ok((record, _)) if record.lsn != next => {
                        format!(
                            "record LSN {} out of sequence (expected {next})",
                            record.lsn
                        )
                    }
                    Ok((record, used)) => {
                        // A crafted (checksum-valid) record at LSN u64::MAX
                        // must not overflow: refuse it like corruption.
                        next = next.checked_add(1).ok_or_else(|| {
                            corrupt(offset, format!("record LSN {} is out of range", record.lsn))
                        })?;
                        records.push(record);
                        offset += used;
                        continue;
                    }
                    Err(reason) => reason,
                };
                if !is_last || valid_record_follows(&bytes[offset + 1..], next.saturating_sub(1)) {
                    return Err(corrupt(offset, failure));
                }
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    dropped_bytes = bytes.len() - offset,
                    "truncating torn log tail: {failure}"
                );
                truncated_tail_bytes += (bytes.len() - offset) as u64;
                disk.truncate(&path, offset as u64)
                    .await
                    .map_err(io(&path))?;
                disk.sync(&path).await.map_err(io(&path))?;
                break;
            }
            segments.push(Segment {
                first_lsn: header_lsn,
                path,
                len: offset.min(bytes.len()) as u64,
            });
            expected = Some(next);
        }
        let next_lsn = expected.unwrap_or(first_lsn.max(1));
        let mut wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments,
            next_lsn,
            poisoned: None,
        };
        if wal.segments.is_empty() {
            wal.start_segment().await?;
        }
        Ok((
            wal,
            Recovered {
                records,
                truncated_tail_bytes,
            },
        ))
    }

    /// The LSN the next record gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Total bytes in all segments.
    pub fn len_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn poison<T>(&mut self, path: &Path, source: std::io::Error) -> Result<T, WalError> {
        self.poisoned = Some(format!("{}: {source}", path.display()));
        Err(WalError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    async fn start_segment(&mut self) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(self.next_lsn));
        let header = encode_segment_header(self.next_lsn);
        if let Err(e) = self.disk.truncate(&path, 0).await {
            return self.poison(&path, e);
        }
        if let Err(e) = self.disk.append(&path, &header).await {
            return self.poison(&path, e);
        }
        if let Err(e) = self.disk.sync(&path).await {
            return self.poison(&path, e);
        }
        let dir = self.dir.clone();
        if let Err(e) = self.disk.sync_dir(&dir).await {
            return self.poison(&dir, e);
        }
        self.segments.push(Segment {
            first_lsn: self.next_lsn,
            path,
            len: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    /// Appends already-encoded records (`count` of them, numbered from
    /// [`Wal::next_lsn`] on, see [`encode_record`]) and syncs. When it
    /// returns Ok they are durable. Any error poisons the log.
    pub async fn write_and_sync(&mut self, bytes: &[u8], count: u64) -> Result<Lsn, WalError> {
        if let Some(reason) = &self.poisoned {
            return Err(WalError::Poisoned(reason.clone()));
        }
        let current = self.segments.last().expect("open made a segment");
        if current.len >= self.segment_bytes_max && current.len > SEGMENT_HEADER_LEN as u64 {
            self.start_segment().await?;
        }
        let path = self.segments.last().unwrap().path.clone();
        match self.disk.append_and_sync(&path, bytes).await {
            Ok(len) => self.segments.last_mut().unwrap().len = len,
            Err(e) => return self.poison(&path, e),
        }
        self.next_lsn += count;
        Ok(self.next_lsn - 1)
    }

    /// Deletes segments whose records all have LSNs at or below `lsn` (they
    /// are covered by durable snapshots). The newest segment is always kept.
    pub async fn purge_through(&mut self, lsn: Lsn) -> Result<usize, WalError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn + 1 {
            let segment = self.segments.remove(0);
            self.disk
                .remove(&segment.path)
                .await
                .map_err(|source| WalError::Io {
                    path: segment.path.clone(),
                    source,
                })?;
            removed += 1;
        }
        if removed > 0 {
            let dir = self.dir.clone();
            self.disk
                .sync_dir(&dir)
                .await
                .map_err(|source| WalError::Io { path: dir, source })?;
        }
        Ok(removed)
    }

    /// LSN of the first record still in the log.
    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(self.next_lsn, |s| s.first_lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::SimDisk;
    use proptest::prelude::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const DIR: &str = "/log";

    async fn write(wal: &mut Wal<SimDisk>, payloads: &[&[u8]]) -> Lsn {
        let mut buf = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, wal.next_lsn() + i as u64, 7, 1, p);
        }
        wal.write_and_sync(&buf, payloads.len() as u64)
            .await
            .unwrap()
    }

    async fn reopen(disk: &SimDisk) -> Result<(Wal<SimDisk>, Recovered), WalError> {
        Wal::open(disk.clone(), Path::new(DIR), 200, 1).await
    }

    fn payloads(r: &Recovered) -> Vec<Vec<u8>> {
        r.records.iter().map(|r| r.payload.clone()).collect()
    }

    #[test]
    fn records_survive_reopen_across_segments() {
        block(async {
            let disk = SimDisk::new();
            let (mut wal, rec) = reopen(&disk).await.unwrap();
            assert!(rec.records.is_empty());
            for i in 0..20u8 {
                write(&mut wal, &[&[i; 30]]).await;
            }
            assert!(
                disk.list(Path::new(DIR)).await.unwrap().len() > 1,
                "rotated"
            );
            disk.crash_drop_all();
            let (wal, rec) = reopen(&disk).await.unwrap();
            assert_eq!(rec.records.len(), 20);
            assert_eq!(
                rec.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
                (1..=20).collect::<Vec<_>>()
            );
            assert_eq!(wal.next_lsn(), 21);
        });
    }

    #[test]
    fn a_torn_tail_is_truncated() {
        block(async {
            let disk = SimDisk::new();
            let (mut wal, _) = reopen(&disk).await.unwrap();
            write(&mut wal, &[b"one", b"two"]).await;
            let seg = Path::new(DIR).join(segment_name(1));
            // Half a record at the end, as a crash mid-write leaves it.
            let mut half = Vec::new();
            encode_record(&mut half, 3, 7, 1, b"three");
            disk.append(&seg, &half[..half.len() / 2]).await.unwrap();
            let (mut wal, rec) = reopen(&disk).await.unwrap();
            assert_eq!(payloads(&rec), vec![b"one".to_vec(), b"two".to_vec()]);
            assert!(rec.truncated_tail_bytes > 0);
            // And the log continues cleanly after the cut.
            write(&mut wal, &[b"three"]).await;
            let (_, rec) = reopen(&disk).await.unwrap();
            assert_eq!(rec.records.len(), 3);
        });
    }

    #[test]
    fn corruption_in_the_middle_is_refused_with_file_and_offset() {
        block(async {
            let disk = SimDisk::new();
            let (mut wal, _) = reopen(&disk).await.unwrap();
            write(&mut wal, &[b"one", b"two", b"three"]).await;
            let seg = Path::new(DIR).join(segment_name(1));
            let mut bytes = disk.read(&seg).await.unwrap();
            let first_payload = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN;
            bytes[first_payload] ^= 0xff; // flip a byte of record 1's payload
            disk.truncate(&seg, 0).await.unwrap();
            disk.append(&seg, &bytes).await.unwrap();
            match reopen(&disk).await {
                Err(WalError::Corrupt { path, offset, .. }) => {
                    assert_eq!(path, seg);
                    assert_eq!(offset, SEGMENT_HEADER_LEN as u64);
                }
                other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
            }
        });
    }

    #[test]
    fn a_failed_sync_poisons_the_log() {
        block(async {
            let disk = SimDisk::new();
            let (mut wal, _) = reopen(&disk).await.unwrap();
            disk.set_fail_syncs(true);
            let mut buf = Vec::new();
            encode_record(&mut buf, 1, 0, 1, b"x");
            assert!(wal.write_and_sync(&buf, 1).await.is_err());
            disk.set_fail_syncs(false);
            assert!(matches!(
                wal.write_and_sync(&buf, 1).await,
                Err(WalError::Poisoned(_))
            ));
        });
    }

    #[test]
    fn purge_drops_whole_segments_only() {
        block(async {
            let disk = SimDisk::new();
            let (mut wal, _) = reopen(&disk).await.unwrap();
            for i in 0..20u8 {
                write(&mut wal, &[&[i; 30]]).await;
            }
            let before = disk.list(Path::new(DIR)).await.unwrap().len();
            wal.purge_through(10).await.unwrap();
            assert!(wal.first_lsn() <= 11, "records after 10 are kept");
            assert!(disk.list(Path::new(DIR)).await.unwrap().len() < before);
            let (_, rec) = reopen(&disk).await.unwrap();
            assert!(rec.records.first().unwrap().lsn <= 11);
            assert_eq!(rec.records.last().unwrap().lsn, 20);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Model check: random batches, each synced or not, then a crash that
        /// keeps a random part of the unsynced bytes. Every synced record
        /// must come back, in order, and nothing but a prefix of what was
        /// written may appear.
        #[test]
        fn crash_recovery_matches_the_model(
            batches in proptest::collection::vec((proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..4), any::<bool>()), 1..12),
            choices in proptest::collection::vec(any::<u64>(), 64),
        ) {
            block(async {
                let disk = SimDisk::new();
                let (mut wal, _) = reopen(&disk).await.unwrap();
                let mut written: Vec<Vec<u8>> = Vec::new();
                let mut durable = 0usize;
                // Synced batches go through the log; the unsynced tail is
                // appended raw to the newest segment without sync.
                let mut unsynced = Vec::new();
                for (batch, synced) in &batches {
                    if *synced && unsynced.is_empty() {
                        let refs: Vec<&[u8]> = batch.iter().map(|p| p.as_slice()).collect();
                        write(&mut wal, &refs).await;
                        written.extend(batch.iter().cloned());
                        durable = written.len();
                    } else {
                        for p in batch {
                            encode_record(&mut unsynced, (written.len() + 1) as u64, 7, 1, p);
                            written.push(p.clone());
                        }
                    }
                }
                let seg_count_before_unsynced = disk.list(Path::new(DIR)).await.unwrap().len();
                let last = disk.list(Path::new(DIR)).await.unwrap().pop().unwrap();
                disk.append(&Path::new(DIR).join(last), &unsynced).await.unwrap();
                let mut i = 0;
                disk.crash(|n| { i += 1; choices[i % choices.len()] % n });
                let (_, rec) = reopen(&disk).await.unwrap();
                let got = payloads(&rec);
                assert!(got.len() >= durable, "lost synced records: {} < {durable}", got.len());
                assert_eq!(&got[..], &written[..got.len()], "recovered records are a prefix of what was written");
                assert!(disk.list(Path::new(DIR)).await.unwrap().len() >= seg_count_before_unsynced.min(1));
            });
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
            let _ = decode_segment_header(&bytes);
        }
    }
}
