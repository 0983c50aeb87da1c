//! The checks behind the fuzz targets, as plain functions: the cargo-fuzz
//! targets in `fuzz_targets/` call them on libFuzzer's inputs, and the main
//! crate's `tests/fuzz_targets.rs` runs them under proptest (it includes this
//! file with `#[path]`), so they are exercised by a plain `cargo test` too.
//!
//! Every check panics only on a real bug.

use distkv::key::Key;
use distkv::op::{format_reply, parse_op, Op, OpResult};
use distkv::wire::frame::{decode_frame, encode_frame, FRAME_HEADER_LEN};
use distkv::wire::{decode_msg, encode_msg};

/// Bytes from the network: the frame decoder and the message decoder must
/// never panic, and whatever decodes must survive a round trip.
pub fn check_frame_decode(data: &[u8]) {
    // As a frame (what a connection reader does).
    if let Ok((payload, used)) = decode_frame(data) {
        assert_eq!(used, FRAME_HEADER_LEN + payload.len());
        assert!(used <= data.len());
        check_msg(payload);
    }
    // As a payload directly (a frame's crc is easy to forge: this is what a
    // hostile peer can feed the message decoder).
    check_msg(data);
    // Wrapped in a valid frame: it decodes back to the same bytes.
    if data.len() <= 1 << 20 {
        let frame = encode_frame(data);
        let (payload, used) = decode_frame(&frame).expect("a fresh frame decodes");
        assert_eq!(payload, data);
        assert_eq!(used, frame.len());
    }
}

fn check_msg(payload: &[u8]) {
    if let Ok(msg) = decode_msg(payload) {
        let bytes = encode_msg(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode_msg(&bytes).expect("re-encoded message decodes"), msg);
    }
}

/// A request line: parsing never panics; a parsed operation formats with a
/// plausible result without panicking, its reply names the same key(s), and
/// the operation written back as a request parses to the same operation.
pub fn check_parse_op(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(op) = parse_op(line) else {
        return;
    };
    let flag = data.first().is_some_and(|b| b & 1 == 1);
    let key_len = data.last().map_or(0, |b| usize::from(b % 24));
    let value = b"v".to_vec();
    let (request, result) = match &op {
        Op::Put { key, value } => (
            format!("PUT {key} {}", text(value)),
            OpResult::Put { found: flag },
        ),
        Op::Get { key } => (format!("GET {key}"), OpResult::Get(Some(value.clone()))),
        Op::Swap { key, value } => (format!("SWAP {key} {}", text(value)), OpResult::Swap(None)),
        Op::Delete { key } => (format!("DELETE {key}"), OpResult::Delete { found: flag }),
        Op::Scan { start, end } => (
            format!("SCAN {start} {end}"),
            OpResult::Scan(vec![(start.clone(), value.clone()), (end.clone(), value)]),
        ),
        Op::Check { key, expected } => (
            format!("CHECK {key} {}", expected.as_deref().map_or("null", text)),
            OpResult::Check,
        ),
        // Not in the text protocol: parsing never makes one.
        Op::Export { .. } => panic!("parse_op made an EXPORT from {line:?}"),
    };
    // The canonical request parses to the same operation.
    assert_eq!(parse_op(&request).as_ref(), Ok(&op), "request {request:?}");

    for width in [0, key_len] {
        let reply = format_reply(&op, &result, width);
        assert!(!reply.starts_with("ERROR"), "{reply:?}");
        let first: Vec<&str> = reply.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(first[0], op.name());
        let reparsed = |word: &str| Key::parse(word).unwrap_or_else(|e| panic!("{word:?}: {e}"));
        match &op {
            Op::Put { key, .. } | Op::Delete { key } => {
                assert_eq!(first.len(), 3, "{reply:?}");
                assert_eq!(&reparsed(first[1]), key);
                let found = if flag { "found" } else { "not_found" };
                assert_eq!(first[2], found);
            }
            Op::Get { key } | Op::Swap { key, .. } => {
                assert_eq!(first.len(), 3, "{reply:?}");
                assert_eq!(&reparsed(first[1]), key);
                let expected = if matches!(op, Op::Get { .. }) {
                    "v"
                } else {
                    "null"
                };
                assert_eq!(first[2], expected);
            }
            Op::Scan { start, end } => {
                assert_eq!(first.len(), 4, "{reply:?}");
                assert_eq!(&reparsed(first[1]), start);
                assert_eq!(&reparsed(first[2]), end);
                assert_eq!(first[3], "BEGIN");
                let lines: Vec<&str> = reply.lines().collect();
                assert_eq!(lines.len(), 4, "{reply:?}");
                assert_eq!(&reparsed(lines[1].split(' ').next().unwrap()), start);
                assert_eq!(&reparsed(lines[2].split(' ').next().unwrap()), end);
                assert_eq!(lines[3], "SCAN END");
            }
            Op::Check { key, .. } => {
                assert_eq!(first.len(), 3, "{reply:?}");
                assert_eq!(&reparsed(first[1]), key);
                assert_eq!(first[2], "ok");
            }
            Op::Export { .. } => unreachable!("refused above"),
        }
        if width > 0 {
            // Padded keys have at least `width` digits.
            let digits = first[1]
                .bytes()
                .rev()
                .take_while(u8::is_ascii_digit)
                .count();
            assert!(digits >= width, "{reply:?} with key_len {width}");
        }
    }
}

fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).expect("values parsed from text are UTF-8")
}

// ---------------------------------------------------------------------------
// Storage: write-ahead log records and segments, snapshots.

use distkv::map::Partition;
use distkv::rt::tokio_rt::TokioRuntime;
use distkv::rt::{Disk, SimDisk};
use distkv::storage::group_commit::GroupCommitConfig;
use distkv::storage::snapshot::{decode_snapshot, encode_snapshot};
use distkv::storage::wal::{
    decode_record, decode_segment_header, encode_record, encode_segment_header, segment_name, Wal,
    RECORD_HEADER_LEN, RECORD_PAYLOAD_LEN_MAX, SEGMENT_HEADER_LEN,
};
use distkv::storage::{LogEntry, Storage, StorageConfig, KIND_ENTRY};
use std::path::Path;

/// Bytes read back from a log or snapshot file: `decode_record`,
/// `decode_segment_header` and `decode_snapshot` never panic, and whatever
/// decodes re-encodes to the same bytes (records, headers) or the same value
/// (snapshots). The bytes are also tried as a record payload and as a
/// snapshot body behind valid checksums, which is what a buggy writer (or
/// forged checksums) would hand the decoders.
pub fn check_wal_decode(data: &[u8]) {
    check_record(data);
    if let Ok(lsn) = decode_segment_header(data) {
        assert_eq!(encode_segment_header(lsn), data[..SEGMENT_HEADER_LEN]);
    }
    check_snapshot(data);

    if data.len() <= RECORD_PAYLOAD_LEN_MAX {
        let lsn = data
            .iter()
            .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b));
        let mut record = Vec::new();
        encode_record(
            &mut record,
            lsn,
            lsn >> 3,
            data.first().copied().unwrap_or(1),
            data,
        );
        let (decoded, used) = decode_record(&record).expect("a fresh record decodes");
        assert_eq!(used, record.len());
        assert_eq!((decoded.lsn, decoded.payload.as_slice()), (lsn, data));
        // Trailing bytes after a record are not part of it.
        record.extend_from_slice(data);
        assert_eq!(decode_record(&record).expect("still decodes").1, used);
    }
    // As a snapshot body; the partition id is taken from the first byte so
    // that bodies of other partitions get past the id check too.
    let partition = data
        .first()
        .map_or(0, |&b| if b < 251 { u64::from(b) } else { 0 });
    check_snapshot(&wrap_snapshot(partition, 7, data));
}

fn check_record(data: &[u8]) {
    if let Ok((record, used)) = decode_record(data) {
        assert_eq!(used, RECORD_HEADER_LEN + record.payload.len());
        assert!(used <= data.len());
        let mut again = Vec::new();
        encode_record(
            &mut again,
            record.lsn,
            record.group,
            record.kind,
            &record.payload,
        );
        assert_eq!(
            again,
            data[..used],
            "a decoded record re-encodes to its bytes"
        );
    }
}

fn check_snapshot(bytes: &[u8]) {
    if let Ok((partition, lsn, state)) = decode_snapshot(bytes) {
        assert_eq!(state.store.range().id, partition);
        let again = encode_snapshot(partition, lsn, &state);
        let (p, l, s) = decode_snapshot(&again).expect("a re-encoded snapshot decodes");
        assert_eq!((p, l, &s), (partition, lsn, &state));
    }
}

/// A snapshot file with valid header and checksums around any `body`.
pub fn wrap_snapshot(partition: u64, lsn: u64, body: &[u8]) -> Vec<u8> {
    distkv::storage::snapshot::frame_snapshot(partition, lsn, body)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

const LOG_DIR: &str = "/log";

/// Opens a log directory holding one segment file with exactly `bytes`.
async fn open_log(bytes: &[u8], name: &str) -> (SimDisk, Result<Vec<u64>, String>) {
    let disk = SimDisk::new();
    let dir = Path::new(LOG_DIR);
    disk.create_dir_all(dir).await.expect("mkdir");
    disk.append(&dir.join(name), bytes).await.expect("write");
    let result = Wal::open(disk.clone(), dir, 1 << 20, 1)
        .await
        .map(|(_, recovered)| recovered.records.iter().map(|r| r.lsn).collect())
        .map_err(|e| e.to_string());
    (disk, result)
}

/// A log directory holding one segment file of arbitrary bytes (as is, and
/// behind a valid segment header): `Wal::open` returns Ok or Err, never
/// panics. On Ok, the records have consecutive LSNs from the segment's first
/// LSN, and opening again (after any torn tail was cut) finds the same
/// records and nothing more to cut.
pub fn check_wal_open(data: &[u8]) {
    let with_header = [encode_segment_header(1).as_slice(), data].concat();
    block_on(async {
        for bytes in [data, with_header.as_slice()] {
            let name = segment_name(1);
            let (disk, first) = open_log(bytes, &name).await;
            let Ok(lsns) = first else { continue };
            for (i, lsn) in lsns.iter().enumerate() {
                assert_eq!(*lsn, 1 + i as u64, "records in LSN order from 1");
            }
            let (_, again) = Wal::open(disk, Path::new(LOG_DIR), 1 << 20, 1)
                .await
                .expect("a recovered log opens again");
            assert_eq!(
                again.truncated_tail_bytes, 0,
                "the torn tail was already cut"
            );
            assert_eq!(again.records.len(), lsns.len());
        }
    });
}

/// The partition every replayed log starts with.
pub fn replay_partition() -> Partition {
    Partition {
        id: 0,
        table: "t".into(),
        start: 0,
        end: None,
        replicas: vec![0],
    }
}

/// Log replay at server start: a log whose records are valid (checksums
/// right) but whose payloads are arbitrary, after one that hosts partition 0.
/// `data` is a sequence of `[group, len, payload (len bytes)]`. Recovery
/// (`Storage::open`: decode each entry, replay it through the state machine)
/// returns Ok or Err, never panics.
pub fn check_log_replay(data: &[u8]) {
    let mut segment = encode_segment_header(1);
    // Encoded as the server does (bincode, varint integers).
    let host = bincode::Options::serialize(
        bincode::DefaultOptions::new(),
        &LogEntry::Host(replay_partition()),
    )
    .expect("an entry encodes");
    encode_record(&mut segment, 1, 0, KIND_ENTRY, &host);
    let mut lsn = 2;
    let mut rest = data;
    while let [group, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        let kind = if group & 0x80 == 0 {
            KIND_ENTRY
        } else {
            group & 0x7f
        };
        encode_record(&mut segment, lsn, u64::from(group & 3), kind, payload);
        lsn += 1;
        rest = tail;
    }
    block_on(async {
        let disk = SimDisk::new();
        let dir = Path::new(LOG_DIR);
        disk.create_dir_all(dir).await.expect("mkdir");
        disk.append(&dir.join(segment_name(1)), &segment)
            .await
            .expect("write");
        let config = StorageConfig {
            log_dir: dir.to_path_buf(),
            db_dir: "/db".into(),
            group_commit: GroupCommitConfig {
                batch_size: 8,
                batch_timeout: std::time::Duration::ZERO,
            },
            segment_bytes_max: 1 << 20,
            checkpoint_log_bytes: 1 << 20,
        };
        if let Ok((_, recovery)) = Storage::open(&TokioRuntime, disk, config).await {
            assert!(recovery.records_replayed < lsn as usize);
            // Restarting the replicas re-applies their committed entries,
            // whatever commands those hold.
            let mut core =
                distkv::server::ServerCore::new(0, recovery.groups, Default::default(), 1);
            let _ = core.take_output();
            core.tick();
            let _ = core.take_output();
        }
    });
}
