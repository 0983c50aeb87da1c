//! Group commit: many appends, one write and one fsync.
//!
//! ```text
//!  driver: append(rec) -> lsn ──▶ pending buffer ──wake──▶ flusher task
//!                                                          wait until batch_size records
//!                                                          or batch_timeout after the first
//!                                                          write + fsync (Wal::write_and_sync)
//!  driver ◀── durable LSN (watch) ◀────────────────────────┘
//! ```
//! While one fsync runs, new appends collect in the buffer, so the batch
//! grows with load on its own; `batch_timeout` only adds a deliberate wait
//! for more company (0 = flush as soon as the flusher is free).
//! The driver acknowledges a request only when the durable LSN reaches the
//! LSN its effects were appended at ("ack after fsync").

use super::wal::{encode_record, Lsn, Wal, RECORD_PAYLOAD_LEN_MAX};
use crate::rt::{Disk, Runtime};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// When to flush.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitConfig {
    /// Flush once this many records are pending.
    pub batch_size: usize,
    /// Flush at most this long after the first pending record arrived.
    pub batch_timeout: Duration,
}

/// How often the flusher logs its batching statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    count: u64,
    /// LSN the next appended record gets.
    next_lsn: Lsn,
    first_at: Option<Instant>,
}

/// The state of the log as the flusher reports it.
pub type Durable = Result<Lsn, String>;

/// The driver's handle: append records, learn when they are durable.
pub struct LogWriter {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    durable: watch::Receiver<Durable>,
}

impl LogWriter {
    /// Starts the flusher task on `rt`, taking ownership of `wal` (shared
    /// with whoever purges it).
    pub fn start<R: Runtime, D: Disk>(
        rt: &R,
        wal: Arc<tokio::sync::Mutex<Wal<D>>>,
        next_lsn: Lsn,
        config: GroupCommitConfig,
    ) -> LogWriter {
        let pending = Arc::new(Mutex::new(Pending {
            next_lsn,
            ..Pending::default()
        }));
        let wake = Arc::new(Notify::new());
        let (durable_tx, durable) = watch::channel(Ok(next_lsn - 1));
        rt.spawn(flusher(
            rt.clone(),
            wal,
            pending.clone(),
            wake.clone(),
            durable_tx,
            config,
        ));
        LogWriter {
            pending,
            wake,
            durable,
        }
    }

    /// Buffers one record and returns its LSN. It is durable once
    /// [`LogWriter::durable`] reaches that LSN.
    pub fn append(&self, now: Instant, group: u64, kind: u8, payload: &[u8]) -> Lsn {
        assert!(
            payload.len() <= RECORD_PAYLOAD_LEN_MAX,
            "callers bound record sizes"
        );
        let mut p = self.pending.lock().unwrap();
        let lsn = p.next_lsn;
        encode_record(&mut p.buf, lsn, group, kind, payload);
        p.next_lsn += 1;
        p.count += 1;
        p.first_at.get_or_insert(now);
        drop(p);
        self.wake.notify_one();
        lsn
    }

    /// LSN of the last appended record (durable or not).
    pub fn last_appended(&self) -> Lsn {
        self.pending.lock().unwrap().next_lsn - 1
    }

    /// The durable LSN, or the failure that stopped the log.
    pub fn durable(&self) -> Durable {
        self.durable.borrow().clone()
    }

    /// A receiver of durable-LSN updates, for a driver that cannot lend
    /// out `&mut self` while it waits. Whoever holds it must be the only
    /// waiter (see [`LogWriter::durable_changed`]).
    pub fn durable_watch(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// Waits until the durable LSN changes (or the log fails). Only the
    /// driver waits on this channel: a `watch` wakes several waiters in an
    /// order drawn from tokio's thread-local RNG, which would make
    /// simulations nondeterministic.
    pub async fn durable_changed(&mut self) -> Durable {
        if self.durable.changed().await.is_err() {
            return Err("log flusher stopped".into());
        }
        self.durable()
    }
}

async fn flusher<R: Runtime, D: Disk>(
    rt: R,
    wal: Arc<tokio::sync::Mutex<Wal<D>>>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    durable_tx: watch::Sender<Durable>,
    config: GroupCommitConfig,
) {
    // Operators' view of group commit: how many records each fsync carried.
    let (mut records, mut fsyncs, mut report_at) = (0u64, 0u64, rt.now() + STATS_INTERVAL);
    loop {
        // Wait for work.
        let first_at = loop {
            if let Some(at) = pending.lock().unwrap().first_at {
                break at;
            }
            wake.notified().await;
        };
        // Give the batch a chance to fill, within the timeout.
        let deadline = first_at + config.batch_timeout;
        loop {
            if pending.lock().unwrap().count >= config.batch_size as u64 {
                break;
            }
            let now = rt.now();
            if now >= deadline {
                break;
            }
            tokio::select! {
                biased;
                _ = wake.notified() => {}
                _ = rt.sleep(deadline - now) => break,
            }
        }
        let (buf, count) = {
            let mut p = pending.lock().unwrap();
            p.first_at = None;
            (std::mem::take(&mut p.buf), std::mem::take(&mut p.count))
        };
        let started = rt.now();
        let result = wal.lock().await.write_and_sync(&buf, count).await;
        if crate::metrics::enabled() {
            let took = rt.now().saturating_duration_since(started);
            metrics::histogram!("distkv_wal_fsync_duration_seconds").record(took.as_secs_f64());
            metrics::histogram!("distkv_wal_records_per_fsync").record(count as f64);
            metrics::counter!("distkv_wal_written_bytes_total").increment(buf.len() as u64);
        }
        records += count;
        fsyncs += 1;
        if rt.now() >= report_at {
            tracing::info!(
                records,
                fsyncs,
                records_per_fsync = format!("{:.1}", records as f64 / fsyncs as f64),
                "group commit in the last {}s",
                STATS_INTERVAL.as_secs()
            );
            (records, fsyncs, report_at) = (0, 0, rt.now() + STATS_INTERVAL);
        }
        match result {
            Ok(lsn) => {
                if durable_tx.send(Ok(lsn)).is_err() {
                    return; // the driver is gone
                }
            }
            Err(e) => {
                tracing::error!("write-ahead log failed: {e}");
                let _ = durable_tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}
