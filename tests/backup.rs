//! Backup and restore on real processes: a backup taken while transactions
//! write is the cluster at one instant, and a restore elsewhere holds
//! exactly that data.

mod common;

use common::Cluster;
use distkv::backup::{read_rows, verify};
use distkv::client::{Client, ClientConfig};
use distkv::key::Key;
use distkv::op::Op;
use distkv::rt::tokio_rt::TokioRuntime;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TABLES: &str = "accounts=3000,events=300";
const WRITERS: u64 = 4;

/// The keys writer `w` writes together, in every partition of both tables
/// (3 servers: 3 partitions each).
fn group(w: u64) -> Vec<Key> {
    vec![
        Key::new("accounts", 100 + w),
        Key::new("accounts", 1100 + w),
        Key::new("accounts", 2100 + w),
        Key::new("events", 10 + w),
        Key::new("events", 110 + w),
        Key::new("events", 210 + w),
    ]
}

fn is_group_key(key: &Key) -> bool {
    (0..WRITERS).any(|w| group(w).contains(key))
}

/// A preloaded value: 1 KiB, so each partition's copy spans several pages.
fn filler(key: &Key) -> Vec<u8> {
    format!("{key}:{}", "x".repeat(1000)).into_bytes()
}

/// One writer's commands: `(version, sent, acknowledged)`; `None` if its
/// outcome is not known.
type Log = Vec<(u64, Instant, Option<Instant>)>;

#[test]
fn a_backup_under_write_load_is_one_instant_and_restores_exactly() {
    let src = Cluster::start_with(3, TABLES);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(Client::connect(
            TokioRuntime,
            ClientConfig::new(src.manager_addr),
        ))
        .unwrap();
    // Preload every key but the writers' (3,000 + 300 keys, ~3.4 MB).
    rt.block_on(async {
        let mut s = client.session();
        let keys: Vec<Key> = (0..3000)
            .map(|n| Key::new("accounts", n))
            .chain((0..300).map(|n| Key::new("events", n)))
            .filter(|k| !is_group_key(k))
            .collect();
        for chunk in keys.chunks(200) {
            let ops = chunk
                .iter()
                .map(|k| Op::Put {
                    key: k.clone(),
                    value: filler(k),
                })
                .collect();
            s.execute(ops).await.expect("preload");
        }
    });
    // Writers: each command writes version v to all six keys of its
    // group, across six partitions of two tables, as one transaction.
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Log>>> = (0..WRITERS).map(|_| Arc::default()).collect();
    for w in 0..WRITERS {
        let (client, stop, log) = (client.clone(), stop.clone(), logs[w as usize].clone());
        rt.spawn(async move {
            let mut s = client.session();
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let value = format!("w{w}-v{v}").into_bytes();
                let ops = group(w)
                    .into_iter()
                    .map(|key| Op::Put {
                        key,
                        value: value.clone(),
                    })
                    .collect();
                let sent = Instant::now();
                let ok = s.execute(ops).await.is_ok();
                log.lock().unwrap().push((v, sent, ok.then(Instant::now)));
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("b1");
    let backup_dir_arg = backup_dir.to_str().unwrap();
    let began = Instant::now();
    let out = src.admin(&["backup", "--out", backup_dir_arg]);
    let ended = Instant::now();
    assert!(out.status.success(), "backup failed: {}", out.stderr);
    assert!(out.stdout.contains("backup of"), "{}", out.stdout);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));

    // The backup checks out, and holds every preloaded key as written.
    let manifest = verify(&backup_dir).expect("the backup verifies");
    let mut data: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    for t in &manifest.tables {
        assert_eq!(t.partitions, 3, "table {}", t.name);
        for (num, value) in read_rows(&backup_dir, t).unwrap() {
            data.insert(Key::new(t.name.clone(), num), value);
        }
    }
    assert_eq!(data.len(), 3300, "every key, once");
    for (key, value) in &data {
        if !is_group_key(key) {
            assert_eq!(value, &filler(key), "{key}");
        }
    }
    // Each writer's group: one version in all six partitions (no torn
    // transaction), at least the last acknowledged before the backup
    // began, at most the last sent before it ended.
    let mut versions = Vec::new();
    for w in 0..WRITERS {
        let values: Vec<&Vec<u8>> = group(w).iter().map(|k| &data[k]).collect();
        assert!(
            values.iter().all(|v| *v == values[0]),
            "writer {w}'s transaction is torn in the backup: {:?}",
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>()
        );
        let text = String::from_utf8(values[0].clone()).unwrap();
        let v: u64 = text
            .strip_prefix(&format!("w{w}-v"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("writer {w}: unexpected value {text}"));
        let log = logs[w as usize].lock().unwrap();
        let acked_before = log
            .iter()
            .filter(|(_, _, ack)| ack.is_some_and(|a| a < began))
            .map(|(v, _, _)| *v)
            .max()
            .unwrap_or(0);
        let sent_before = log
            .iter()
            .filter(|(_, sent, _)| *sent < ended)
            .map(|(v, _, _)| *v)
            .max()
            .unwrap_or(0);
        assert!(
            acked_before <= v && v <= sent_before,
            "writer {w}: version {v} in the backup, but {acked_before} was acknowledged before it began and {sent_before} sent before it ended"
        );
        let written_after = log.iter().filter(|(_, sent, _)| *sent > ended).count();
        assert!(
            written_after > 0,
            "writer {w} kept writing after the backup"
        );
        versions.push(v);
    }
    // The writers did write during the backup (else this proves little).
    assert!(
        logs.iter().all(|l| l.lock().unwrap().len() > 20),
        "writers wrote too little: {:?}",
        logs.iter()
            .map(|l| l.lock().unwrap().len())
            .collect::<Vec<_>>()
    );

    // Restore into another cluster (2 servers: other partitions), then
    // back that up: the same files, byte for byte.
    let dst = Cluster::start_with(2, TABLES);
    let out = dst.admin(&["restore", "--from", backup_dir_arg]);
    assert!(out.status.success(), "restore failed: {}", out.stderr);
    assert!(out.stdout.contains("restored 3300 keys"), "{}", out.stdout);
    let again = dir.path().join("b2");
    let out = dst.admin(&["backup", "--out", again.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "second backup failed: {}", out.stderr);
    let restored = verify(&again).unwrap();
    assert_eq!(manifest.tables.len(), restored.tables.len());
    for (a, b) in manifest.tables.iter().zip(&restored.tables) {
        assert_eq!(
            (&a.name, a.keys, a.bytes, &a.sha256),
            (&b.name, b.keys, b.bytes, &b.sha256),
            "the restored table differs"
        );
    }
    // A second restore into a cluster that holds data is refused.
    let out = dst.admin(&["restore", "--from", backup_dir_arg]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("already holds"), "{}", out.stderr);
    // So is a damaged backup, before anything is written.
    let rows = backup_dir.join("events.rows");
    let mut raw = std::fs::read(&rows).unwrap();
    raw[20] ^= 0x40;
    std::fs::write(&rows, raw).unwrap();
    let empty = Cluster::start_with(1, TABLES);
    let out = empty.admin(&["restore", "--from", backup_dir_arg]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("damaged"), "{}", out.stderr);
    // And a backup into a directory that holds something.
    let out = src.admin(&["backup", "--out", again.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    eprintln!("versions in the backup: {versions:?}");
}
