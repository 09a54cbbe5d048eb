//! The agent's exporter: streams drained batches to one collector
//! (`Collector.Export`), at least once.
//!
//! ```text
//!  fan-out ──offer()──▶ Queue (std mutex, bounded, drop-oldest) ◀── acks
//!                           │ frozen batches, ids increasing
//!                           ▼
//!                      session task ──▶ Export stream (window of batches)
//! ```
//!
//! Invariants:
//! - [`ExporterHandle::offer`] never blocks on the network: it converts,
//!   appends under a mutex held for no I/O, and wakes the session task.
//! - Items (records and interval counters) stay queued until the collector
//!   acknowledges the batch holding them; after a reconnect every
//!   unacknowledged batch is resent with its original id, so the collector
//!   can drop the copies it already stored. Batches are formed when offered
//!   (each drained interval is cut into batches of at most
//!   `max_batch_records`) and never re-cut.
//! - The queue holds at most `capacity` items. When full, the oldest items
//!   are dropped (acknowledged or not: an unacknowledged batch may thus be
//!   counted as dropped although the collector stored it) and counted; the
//!   counts go to the collector as a `DropReport` in the next batch that was
//!   never sent before (or in an empty batch of its own), and are logged.
//! - Reconnects back off exponentially, with jitter, up to `backoff_max`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use log::{info, warn};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::{
    convert,
    proto::{self, collector_client::CollectorClient},
    security::{self, Security, TokenAdd},
};
use crate::drain::Batch;

/// How long a stopping exporter keeps sending what is queued.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Exporter setup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The collector URL is not usable.
    #[error("--collector {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS or token setup failed.
    #[error(transparent)]
    Security(#[from] security::Error),
}

/// One exporter's settings.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// Stamped on every batch and record.
    pub agent_id: String,
    /// Queue capacity in items (records plus one counters item per interval).
    pub capacity: usize,
    /// Largest number of records in one batch.
    pub max_batch_records: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// TLS and token.
    pub security: Security,
}

impl ExporterConfig {
    /// Defaults for `url`: 1000-record batches, a window of 16 batches,
    /// reconnects from 100 ms up to 30 s.
    pub fn new(url: String, agent_id: String, capacity: usize, security: Security) -> Self {
        Self {
            url,
            agent_id,
            capacity,
            max_batch_records: 1000,
            window: 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            security,
        }
    }
}

/// What an exporter has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Items waiting for an acknowledgement or to be sent.
    pub queued_items: usize,
    /// Records dropped because the queue was full.
    pub dropped_records: u64,
    /// Interval-counter items dropped because the queue was full.
    pub dropped_counters: u64,
    /// Dropped records reported to the collector (acknowledged).
    pub reported_dropped_records: u64,
    /// Batches acknowledged.
    pub acked_batches: u64,
    /// Records in acknowledged batches.
    pub acked_records: u64,
    /// Acknowledged batches the collector had already.
    pub duplicates: u64,
    /// Sessions that ended in an error.
    pub session_errors: u64,
}

#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is a record; boxing would cost an allocation each"
)]
enum Item {
    Record(proto::FlowRecord),
    Counters(proto::IntervalCounters),
}

/// A batch: the items with sequence numbers up to `end` (exclusive) after
/// the previous batch's.
struct Frozen {
    id: u64,
    end: u64,
    /// Sent on some stream already (so its content is fixed).
    sent: bool,
    report: Option<proto::DropReport>,
}

/// The bounded, drop-oldest queue of items grouped into batches. Pure: no
/// I/O, no tokio.
struct Queue {
    items: VecDeque<Item>,
    /// Sequence number of `items[0]`.
    base: u64,
    /// Cover `base..base + items.len()` without gaps, ids increasing.
    batches: VecDeque<Frozen>,
    next_batch_id: u64,
    /// Batches with ids below this were sent on the current stream.
    next_send: u64,
    capacity: usize,
    max_batch: usize,
    unreported: Option<proto::DropReport>,
    stats: ExportStats,
}

fn merge(a: Option<proto::DropReport>, b: proto::DropReport) -> proto::DropReport {
    match a {
        None => b,
        Some(a) => proto::DropReport {
            dropped_records: a.dropped_records + b.dropped_records,
            dropped_counters: a.dropped_counters + b.dropped_counters,
            first_drop_ns: a.first_drop_ns.min(b.first_drop_ns),
            last_drop_ns: a.last_drop_ns.max(b.last_drop_ns),
        },
    }
}

impl Queue {
    fn new(capacity: usize, max_batch: usize) -> Self {
        Self {
            items: VecDeque::new(),
            base: 0,
            batches: VecDeque::new(),
            next_batch_id: 1,
            next_send: 1,
            capacity: capacity.max(1),
            max_batch: max_batch.max(1),
            unreported: None,
            stats: ExportStats::default(),
        }
    }

    fn end_seq(&self) -> u64 {
        self.base + self.items.len() as u64
    }

    fn freeze(&mut self) {
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.batches.push_back(Frozen {
            id,
            end: self.end_seq(),
            sent: false,
            report: None,
        });
    }

    /// Appends one drained interval, cut into batches, and drops the oldest
    /// items beyond capacity.
    fn push(&mut self, batch: &Batch, now_ns: u64) {
        // Batches of max_batch records across the drain's parts, the last
        // one shorter.
        let mut unfrozen = 0;
        for r in &batch.records {
            self.items.push_back(Item::Record(convert::to_proto(r, "")));
            unfrozen += 1;
            if unfrozen == self.max_batch {
                self.freeze();
                unfrozen = 0;
            }
        }
        if unfrozen > 0 {
            self.freeze();
        }
        // The interval's counters close its last batch (or make one).
        self.items
            .push_back(Item::Counters(convert::counters_to_proto(batch)));
        let end = self.end_seq();
        match self.batches.back_mut() {
            Some(last) if !batch.records.is_empty() && !last.sent => last.end = end,
            _ => self.freeze(),
        }
        self.trim(now_ns);
    }

    fn trim(&mut self, now_ns: u64) {
        let (mut records, mut counters) = (0, 0);
        while self.items.len() > self.capacity {
            match self.items.pop_front() {
                Some(Item::Record(_)) => records += 1,
                Some(Item::Counters(_)) => counters += 1,
                None => break,
            }
            self.base += 1;
        }
        if records + counters == 0 {
            return;
        }
        if self.unreported.is_none() {
            warn!(
                "export queue full ({} items): dropping the oldest",
                self.capacity
            );
        }
        let mut report = merge(
            self.unreported.take(),
            proto::DropReport {
                dropped_records: records,
                dropped_counters: counters,
                first_drop_ns: now_ns,
                last_drop_ns: now_ns,
            },
        );
        while self.batches.front().is_some_and(|b| b.end <= self.base) {
            if let Some(gone) = self.batches.pop_front()
                && let Some(r) = gone.report
            {
                // Possibly delivered, never acknowledged: report again.
                report = merge(Some(report), r);
            }
        }
        self.stats.dropped_records += records;
        self.stats.dropped_counters += counters;
        self.unreported = Some(report);
    }

    /// Starts a new stream: everything unacknowledged is sent again.
    fn rewind(&mut self) {
        self.next_send = self.batches.front().map_or(self.next_batch_id, |b| b.id);
    }

    fn in_flight(&self) -> usize {
        self.batches
            .iter()
            .take_while(|b| b.id < self.next_send)
            .count()
    }

    /// The next batch to send on the current stream, if any.
    fn next_batch(&mut self, agent_id: &str, epoch: u64) -> Option<proto::FlowBatch> {
        let mut start = self.base;
        let mut index = None;
        for (i, b) in self.batches.iter().enumerate() {
            if b.id >= self.next_send {
                index = Some(i);
                break;
            }
            start = b.end;
        }
        let i = match index {
            Some(i) => i,
            None if self.unreported.is_some() => {
                // Nothing new to carry the drop report: an empty batch.
                self.freeze();
                self.batches.len() - 1
            }
            None => return None,
        };
        let unreported = self.unreported.take();
        let b = &mut self.batches[i];
        if !b.sent {
            // Only a batch never sent may gain content.
            if let Some(r) = unreported {
                b.report = Some(merge(b.report.take(), r));
            }
        } else {
            self.unreported = unreported;
        }
        b.sent = true;
        self.next_send = b.id + 1;
        let mut records = Vec::new();
        let mut counters = Vec::new();
        let (from, to) = ((start - self.base) as usize, (b.end - self.base) as usize);
        for item in self.items.range(from..to) {
            match item {
                Item::Record(r) => records.push(proto::FlowRecord {
                    agent_id: agent_id.to_owned(),
                    ..r.clone()
                }),
                Item::Counters(c) => counters.push(*c),
            }
        }
        Some(proto::FlowBatch {
            agent_id: agent_id.to_owned(),
            epoch,
            batch_id: b.id,
            records,
            counters,
            dropped: b.report,
        })
    }

    /// Forgets every batch up to `batch_id`, acknowledged by the collector.
    fn ack(&mut self, batch_id: u64, duplicate: bool) {
        while self.batches.front().is_some_and(|b| b.id <= batch_id) {
            let Some(b) = self.batches.pop_front() else {
                break;
            };
            let n = (b.end.saturating_sub(self.base)) as usize;
            let records = self
                .items
                .drain(..n.min(self.items.len()))
                .filter(|i| matches!(i, Item::Record(_)))
                .count();
            self.base = self.base.max(b.end);
            self.stats.acked_batches += 1;
            self.stats.acked_records += records as u64;
            self.stats.duplicates += u64::from(duplicate && b.id == batch_id);
            if let Some(r) = b.report {
                self.stats.reported_dropped_records += r.dropped_records;
                info!(
                    "collector acknowledged the report of {} records and {} counter items dropped while it was unreachable",
                    r.dropped_records, r.dropped_counters
                );
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.unreported.is_none()
    }

    fn stats(&self) -> ExportStats {
        ExportStats {
            queued_items: self.items.len(),
            ..self.stats
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Queue methods leave it consistent at every step that can panic
        // (none are expected); keep exporting after a poisoning panic.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The agent side of one exporter.
#[derive(Clone)]
pub struct ExporterHandle {
    shared: Arc<Shared>,
}

impl ExporterHandle {
    /// Queues a drained batch for export. Never blocks on the network.
    pub fn offer(&self, batch: &Batch) {
        self.shared
            .queue()
            .push(batch, convert::time_to_ns(SystemTime::now()));
        self.shared.wake.notify_one();
    }

    /// What the exporter has done so far.
    pub fn stats(&self) -> ExportStats {
        self.shared.queue().stats()
    }
}

/// Starts an exporter; it runs until `cancel`, then sends what is queued
/// for up to [`FLUSH_TIMEOUT`].
pub fn spawn(
    config: ExporterConfig,
    cancel: CancellationToken,
) -> Result<(ExporterHandle, JoinHandle<()>), Error> {
    let url_err = |reason: String| Error::Url {
        url: config.url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.url.clone())
        .map_err(|e| url_err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = config.security.client_tls(&config.url)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| url_err(format!("TLS setup: {e}")))?;
    }
    let token = TokenAdd::new(config.security.token()?.as_deref());
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::new(config.capacity, config.max_batch_records)),
        wake: Notify::new(),
    });
    let session = Session {
        shared: shared.clone(),
        endpoint,
        token,
        epoch: convert::time_to_ns(SystemTime::now()),
        config,
    };
    let task = tokio::spawn(session.run(cancel));
    Ok((ExporterHandle { shared }, task))
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the collector closed the stream")]
    Closed,
}

struct Session {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    token: TokenAdd,
    epoch: u64,
    config: ExporterConfig,
}

/// Full jitter in `[d/2, d]`, from a xorshift seeded by the clock.
fn jitter(d: Duration, seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let half = d / 2;
    half + Duration::from_nanos(*seed % (half.as_nanos() as u64).max(1))
}

impl Session {
    async fn run(self, cancel: CancellationToken) {
        let url = self.config.url.clone();
        let mut backoff = self.config.backoff_min;
        let mut seed = self.epoch | 1;
        let mut failing = false;
        loop {
            match self.stream(&cancel, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    self.shared.queue().stats.session_errors += 1;
                    let queued = self.shared.queue().items.len();
                    if !failing {
                        warn!("collector {url}: {e}; {queued} items queued, retrying");
                    } else {
                        log::debug!("collector {url}: {e}; {queued} items queued");
                    }
                    failing = true;
                }
            }
            if cancel.is_cancelled() {
                warn!(
                    "collector {url} unreachable at shutdown: {} items not exported",
                    self.shared.queue().items.len()
                );
                return;
            }
            let delay = jitter(backoff, &mut seed);
            backoff = (backoff * 2).min(self.config.backoff_max);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection and stream; `Ok` when stopped and flushed.
    async fn stream(
        &self,
        cancel: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), SessionError> {
        let channel: Channel = tokio::select! {
            c = self.endpoint.connect() => c.map_err(SessionError::Connect)?,
            _ = cancel.cancelled() => return Err(SessionError::Closed),
        };
        let mut client = CollectorClient::with_interceptor(channel, self.token.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(self.config.window.max(1));
        let mut acks = client.export(ReceiverStream::new(rx)).await?.into_inner();
        info!("exporting to collector {}", self.config.url);
        self.shared.queue().rewind();
        let mut deadline = None;
        loop {
            {
                let mut q = self.shared.queue();
                while q.in_flight() < self.config.window {
                    let Some(b) = q.next_batch(&self.config.agent_id, self.epoch) else {
                        break;
                    };
                    if tx.try_send(b).is_err() {
                        // Cannot happen (the channel holds a window); resend later.
                        q.rewind();
                        break;
                    }
                }
                if deadline.is_some() && q.is_empty() {
                    return Ok(());
                }
            }
            let flush_over = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ack = acks.message() => match ack? {
                    Some(a) => {
                        if a.epoch == self.epoch {
                            self.shared.queue().ack(a.batch_id, a.duplicate);
                        }
                        *backoff = self.config.backoff_min;
                    }
                    None => return Err(SessionError::Closed),
                },
                _ = self.shared.wake.notified() => {}
                _ = cancel.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + FLUSH_TIMEOUT);
                }
                _ = flush_over => {
                    warn!(
                        "collector {}: {} items not acknowledged after {FLUSH_TIMEOUT:?}, giving up",
                        self.config.url,
                        self.shared.queue().items.len()
                    );
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{drain::Counters, export::grpc::convert::tests::full_record};

    pub(crate) fn drained(first: u64, n: u64) -> Batch {
        Batch {
            start: convert::time_from_ns(first),
            end: convert::time_from_ns(first + 1),
            records: (first..first + n).map(full_record).collect(),
            counters: Counters([1, 2, 3, 4, 5, 6, 0, 0, 0, 0]),
            dropped_records: 0,
            sampling_rate: 1,
        }
    }

    fn ids(q: &mut Queue) -> Vec<(u64, usize, usize, Option<u64>)> {
        std::iter::from_fn(|| q.next_batch("a", 9))
            .map(|b| {
                (
                    b.batch_id,
                    b.records.len(),
                    b.counters.len(),
                    b.dropped.map(|d| d.dropped_records),
                )
            })
            .collect()
    }

    #[test]
    fn batches_by_size_with_counters_last() {
        let mut q = Queue::new(100, 4);
        q.push(&drained(0, 10), 0);
        q.push(&drained(100, 0), 0);
        assert_eq!(
            ids(&mut q),
            vec![
                (1, 4, 0, None),
                (2, 4, 0, None),
                (3, 2, 1, None),
                (4, 0, 1, None)
            ]
        );
        assert_eq!(q.in_flight(), 4);
        q.ack(2, false);
        assert_eq!(q.stats().queued_items, 2 + 1 + 1);
        assert_eq!(q.stats().acked_records, 8);
        // A new stream resends the unacknowledged, with the same ids.
        q.rewind();
        assert_eq!(ids(&mut q), vec![(3, 2, 1, None), (4, 0, 1, None)]);
        q.ack(4, true);
        assert!(q.is_empty());
        assert_eq!(q.stats().acked_batches, 4);
        assert_eq!(q.stats().duplicates, 1);
    }

    #[test]
    fn full_queue_drops_oldest_and_reports_once() {
        let mut q = Queue::new(25, 10);
        // 3 intervals of 10 records + 1 counters = 33 items; 8 oldest dropped.
        for i in 0..3 {
            q.push(&drained(i * 10, 10), 5);
        }
        assert_eq!(q.stats().dropped_records, 8);
        assert_eq!(q.stats().queued_items, 25);
        let got = ids(&mut q);
        // Batch 1 (records 0..9 + counters) lost 8 records; it was never
        // sent, so the report goes with it.
        assert_eq!(
            got,
            vec![(1, 2, 1, Some(8)), (2, 10, 1, None), (3, 10, 1, None)]
        );
        // Lost in transit, then more drops while unreachable.
        q.rewind();
        q.push(&drained(30, 10), 6);
        assert_eq!(q.stats().dropped_records, 8 + 2 + 8);
        // Batch 1 was dropped whole (its report, possibly never delivered,
        // is merged into the next); batch 2 lost 8 of its records.
        let got = ids(&mut q);
        assert_eq!(got[0], (2, 2, 1, None));
        // The first never-sent batch carries all the unreported drops.
        assert_eq!(got[2], (4, 10, 1, Some(8 + 10)));
        q.ack(4, false);
        assert_eq!(q.stats().reported_dropped_records, 18);
        assert!(q.is_empty());
    }

    #[test]
    fn report_alone_when_nothing_new() {
        // Safety net: drops to report and every batch sent before.
        let mut q = Queue::new(5, 10);
        q.unreported = Some(proto::DropReport {
            dropped_records: 3,
            ..Default::default()
        });
        assert_eq!(ids(&mut q), vec![(1, 0, 0, Some(3))]);
        q.ack(1, false);
        assert!(q.is_empty());
        assert_eq!(q.stats().reported_dropped_records, 3);
        q.rewind();
        assert_eq!(ids(&mut q), vec![]);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut seed = 12345;
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(100), &mut seed);
            assert!(
                d >= Duration::from_millis(50) && d < Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}
