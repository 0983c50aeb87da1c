//! `cargo bench --bench wal`: the write-ahead log alone, on the real
//! filesystem (FsDisk) in a temporary directory next to `target/`.
//!
//! For each batch size (records per fsync) it appends 100-byte records for a
//! fixed time and reports appends/s, fsyncs/s and the mean fsync latency.
//! Numbers, not assertions: compare runs on the same machine.

use distkv::rt::tokio_rt::TokioRuntime;
use distkv::rt::{FsDisk, Runtime};
use distkv::storage::wal::{encode_record, Wal, SEGMENT_BYTES_DEFAULT};
use std::time::Duration;

const RECORD_BYTES: usize = 100;

fn main() {
    let seconds: f64 = std::env::var("WAL_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let base = std::env::current_dir()
        .unwrap()
        .join("target")
        .join("wal-bench");
    println!(
        "wal bench: {RECORD_BYTES}-byte records, {seconds} s per batch size, dir {}",
        base.display()
    );
    println!(
        "{:>10} {:>14} {:>12} {:>16}",
        "batch", "appends/s", "fsyncs/s", "mean fsync (ms)"
    );
    for batch in [1usize, 16, 128] {
        let _ = std::fs::remove_dir_all(&base);
        let (appends, syncs, elapsed) =
            rt.block_on(run(&base, batch, Duration::from_secs_f64(seconds)));
        let secs = elapsed.as_secs_f64();
        println!(
            "{:>10} {:>14.0} {:>12.0} {:>16.3}",
            batch,
            appends as f64 / secs,
            syncs as f64 / secs,
            secs * 1e3 / syncs as f64
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

async fn run(dir: &std::path::Path, batch: usize, duration: Duration) -> (u64, u64, Duration) {
    let rt = TokioRuntime;
    let (mut wal, _) = Wal::open(FsDisk::new(), dir, SEGMENT_BYTES_DEFAULT, 1)
        .await
        .expect("open wal");
    let payload = vec![b'x'; RECORD_BYTES];
    let start = rt.now();
    let (mut appends, mut syncs) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(batch * (RECORD_BYTES + 64));
    while rt.now() - start < duration {
        buf.clear();
        let first = wal.next_lsn();
        for i in 0..batch as u64 {
            encode_record(&mut buf, first + i, 0, 1, &payload);
        }
        wal.write_and_sync(&buf, batch as u64).await.expect("write");
        appends += batch as u64;
        syncs += 1;
    }
    (appends, syncs, rt.now() - start)
}
