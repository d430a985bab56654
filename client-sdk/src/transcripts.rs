//! Live transcripts on the client: `TranscriptSender` batches a producer's chunks into
//! `transcripts.ingestBatch` calls (idempotent retries through client chunk ids), and
//! `TranscriptStream` reads a meeting's chunks in sequence order, exactly once, across window
//! shifts and reconnects, by re-anchoring `transcripts.stream` at the last sequence delivered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use linkedup_schema::api::transcripts::{
    fns, BatchResult, ChunkInput, IngestBatchArgs, TranscriptChunk, MAX_BATCH_CHUNKS,
    MAX_CHUNK_TEXT_CHARS, MAX_STREAM_LIMIT,
};
use query_engine::error::codes;
use query_engine::protocol::CallKind;
use query_engine::value::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::{new_mutation_id, Client};
use crate::error::ClientError;
use crate::subscription::Subscription;

/// A stored chunk, as `TranscriptStream` yields it.
pub type Chunk = TranscriptChunk;

/// Shortest and longest batching window a `TranscriptSender` accepts.
pub const MIN_BATCH_WINDOW: Duration = Duration::from_millis(50);
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Longest `chunkId` and `speakerId` the server accepts, in chars.
const MAX_ID_CHARS: usize = 128;
/// Upper bounds on the configurable sizes, so a typo cannot allocate without limit.
const MAX_QUEUE_CHUNKS: usize = 100_000;
const MAX_REPORTS: usize = 100_000;
const MAX_ATTEMPTS: u32 = 50;
/// LinkedUp's application code (`linkedup_schema::ErrorCode::MeetingNotActive`), spelt out
/// because a pattern needs a constant.
const MEETING_NOT_ACTIVE: &str = "MEETING_NOT_ACTIVE";

/// Why a sender could not be built or a chunk not be queued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TranscriptError {
    /// A `SenderConfig` field is out of range.
    #[error("invalid sender configuration: {0}")]
    Config(String),
    /// The chunk would be refused by the server (`field` names the offending field); it was
    /// not queued, so it cannot spoil the batch it would have travelled in.
    #[error("invalid chunk: {field} {reason}")]
    InvalidChunk { field: &'static str, reason: String },
    /// The sender's worker has stopped (it was closed, or its task ended).
    #[error("transcript sender is closed")]
    Closed,
}

/// How a `TranscriptSender` batches and retries.
#[derive(Clone, Debug, PartialEq)]
pub struct SenderConfig {
    /// A batch is sent at most this long after its first chunk was queued: 50–250 ms.
    pub window: Duration,
    /// A batch is sent as soon as it holds this many chunks: 1–50.
    pub max_batch_chunks: usize,
    /// Chunks queued but not yet batched; `send` waits while the queue is full.
    pub queue_chunks: usize,
    /// Reports (one per batch) buffered for the reader; the worker waits while it is full.
    pub report_capacity: usize,
    /// Attempts per batch, the first included, on transient errors.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt up to `max_backoff`, ±50 %.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait honoured for a `RATE_LIMITED` answer's `retryAfterMs`.
    pub max_retry_after: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            window: MAX_BATCH_WINDOW,
            max_batch_chunks: MAX_BATCH_CHUNKS,
            queue_chunks: 1_000,
            report_capacity: 256,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl SenderConfig {
    pub fn validate(&self) -> Result<(), TranscriptError> {
        let bad = |s: String| Err(TranscriptError::Config(s));
        if self.window < MIN_BATCH_WINDOW || self.window > MAX_BATCH_WINDOW {
            return bad(format!(
                "window must be {MIN_BATCH_WINDOW:?}..={MAX_BATCH_WINDOW:?}, got {:?}",
                self.window
            ));
        }
        if !(1..=MAX_BATCH_CHUNKS).contains(&self.max_batch_chunks) {
            return bad(format!(
                "max_batch_chunks must be 1..={MAX_BATCH_CHUNKS}, got {}",
                self.max_batch_chunks
            ));
        }
        if !(1..=MAX_QUEUE_CHUNKS).contains(&self.queue_chunks) {
            return bad(format!(
                "queue_chunks must be 1..={MAX_QUEUE_CHUNKS}, got {}",
                self.queue_chunks
            ));
        }
        if !(1..=MAX_REPORTS).contains(&self.report_capacity) {
            return bad(format!(
                "report_capacity must be 1..={MAX_REPORTS}, got {}",
                self.report_capacity
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return bad(format!(
                "max_attempts must be 1..={MAX_ATTEMPTS}, got {}",
                self.max_attempts
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return bad("initial_backoff must not exceed max_backoff".into());
        }
        Ok(())
    }
}

/// A chunk to send; the sender gives it a fresh `chunkId`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewChunk {
    pub speaker_id: Option<String>,
    pub text: String,
    /// 0.0..=1.0.
    pub confidence: f64,
    /// Offsets in the meeting, ms; `0 <= start_ms <= end_ms`.
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One stored chunk: its id and the sequence the server gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkAck {
    pub chunk_id: String,
    pub sequence: i64,
    /// The chunk id was already stored (an earlier attempt committed); nothing new was written.
    pub duplicate: bool,
}

/// The outcome of one batch.
#[derive(Clone, Debug)]
pub enum SendReport {
    /// Every chunk of the batch is stored, in the order they were sent.
    Stored { acks: Vec<ChunkAck>, attempts: u32 },
    /// The batch was given up: a permanent refusal (`VALIDATION_ERROR`, `FORBIDDEN`,
    /// `MEETING_NOT_ACTIVE`, ...) or transient errors through every attempt. With a transient
    /// error it may still have been stored; sending the same chunk ids again is safe.
    Failed {
        chunks: Vec<ChunkInput>,
        error: ClientError,
        attempts: u32,
    },
}

enum Command {
    Chunk(ChunkInput),
    /// Send what is batched now; answer once every chunk queued before has been reported.
    Flush(oneshot::Sender<()>),
}

/// Sends one producer's transcript chunks into one meeting. Chunks are stored in the order
/// they are queued: one batch is in flight at a time. Dropping the sender lets its worker send
/// what is queued and stop; `close` does the same and waits for it.
pub struct TranscriptSender {
    tx: mpsc::Sender<Command>,
    worker: JoinHandle<()>,
}

impl std::fmt::Debug for TranscriptSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptSender").finish_non_exhaustive()
    }
}

impl TranscriptSender {
    /// Starts a sender for `meeting_id`. The receiver gets one report per batch; read it (or
    /// drop it): while its buffer is full the worker waits, and then so does `send`.
    pub fn new(
        client: &Client,
        meeting_id: &str,
        config: SenderConfig,
    ) -> Result<(TranscriptSender, mpsc::Receiver<SendReport>), TranscriptError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.queue_chunks);
        let (report_tx, report_rx) = mpsc::channel(config.report_capacity);
        let worker = Worker {
            client: client.clone(),
            meeting_id: meeting_id.to_string(),
            config,
            reports: report_tx,
        };
        let worker = tokio::spawn(worker.run(rx));
        Ok((TranscriptSender { tx, worker }, report_rx))
    }

    /// Queues a chunk under a fresh chunk id, which it returns; waits while the queue is full.
    pub async fn send(&self, chunk: NewChunk) -> Result<String, TranscriptError> {
        let chunk_id = new_mutation_id();
        self.send_input(ChunkInput {
            chunk_id: chunk_id.clone(),
            speaker_id: chunk.speaker_id,
            text: chunk.text,
            confidence: chunk.confidence,
            start_ms: chunk.start_ms,
            end_ms: chunk.end_ms,
        })
        .await?;
        Ok(chunk_id)
    }

    /// Queues a chunk under the caller's chunk id (e.g. one that must survive a restart of the
    /// producer: the server stores each id once per meeting).
    pub async fn send_input(&self, chunk: ChunkInput) -> Result<(), TranscriptError> {
        check_chunk(&chunk)?;
        self.tx
            .send(Command::Chunk(chunk))
            .await
            .map_err(|_| TranscriptError::Closed)
    }

    /// Sends what is batched without waiting for the window, and returns once every chunk
    /// queued before this call has been reported.
    pub async fn flush(&self) -> Result<(), TranscriptError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| TranscriptError::Closed)?;
        rx.await.map_err(|_| TranscriptError::Closed)
    }

    /// Sends everything queued, then stops the worker and waits for it.
    pub async fn close(self) -> Result<(), TranscriptError> {
        drop(self.tx);
        self.worker.await.map_err(|_| TranscriptError::Closed)
    }
}

/// The checks the server makes on one chunk, made before it is queued.
fn check_chunk(c: &ChunkInput) -> Result<(), TranscriptError> {
    let invalid = |field, reason: String| Err(TranscriptError::InvalidChunk { field, reason });
    let chars = |s: &str| s.chars().count();
    if !(1..=MAX_ID_CHARS).contains(&chars(&c.chunk_id)) {
        return invalid("chunkId", format!("must have 1 to {MAX_ID_CHARS} chars"));
    }
    if let Some(s) = &c.speaker_id {
        if !(1..=MAX_ID_CHARS).contains(&chars(s)) {
            return invalid("speakerId", format!("must have 1 to {MAX_ID_CHARS} chars"));
        }
    }
    if !(1..=MAX_CHUNK_TEXT_CHARS).contains(&chars(&c.text)) {
        return invalid(
            "text",
            format!("must have 1 to {MAX_CHUNK_TEXT_CHARS} chars"),
        );
    }
    if !(0.0..=1.0).contains(&c.confidence) {
        return invalid("confidence", format!("must be 0..=1, got {}", c.confidence));
    }
    if c.start_ms < 0 || c.start_ms > c.end_ms {
        return invalid(
            "startMs",
            format!(
                "must satisfy 0 <= startMs <= endMs, got {}..{}",
                c.start_ms, c.end_ms
            ),
        );
    }
    Ok(())
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq)]
pub(crate) enum Retry {
    /// Give up: retrying cannot help.
    Never,
    /// Back off exponentially.
    Backoff,
    /// The server asked to wait at least this long.
    After(Duration),
}

/// How a failed call should be retried: connection losses, `INTERNAL`, `RATE_LIMITED` and
/// unknown codes (protocol §9: like `INTERNAL`) are transient; refusals are not.
pub(crate) fn classify(e: &ClientError) -> Retry {
    match e {
        ClientError::Disconnected
        | ClientError::MutationUnconfirmed { .. }
        | ClientError::Connect(_)
        | ClientError::Protocol(_) => Retry::Backoff,
        ClientError::Function { code, .. } | ClientError::Server { code, .. } => {
            match code.as_str() {
                codes::VALIDATION_ERROR
                | codes::FORBIDDEN
                | MEETING_NOT_ACTIVE
                | codes::NOT_FOUND
                | codes::UNAUTHORIZED => Retry::Never,
                codes::RATE_LIMITED => e.retry_after().map_or(Retry::Backoff, Retry::After),
                // INTERNAL, and unknown codes, which protocol §9 says to treat like INTERNAL.
                _ => Retry::Backoff,
            }
        }
        ClientError::InvalidAddress(_)
        | ClientError::Tls(_)
        | ClientError::Encode(_)
        | ClientError::Decode(_)
        | ClientError::Closed => Retry::Never,
    }
}

/// The delay before attempt `attempt + 1` (`attempt` ≥ 1 failed so far); `unit` in [0, 1).
fn backoff(config: &SenderConfig, attempt: u32, unit: f64) -> Duration {
    backoff_delay(config.initial_backoff, config.max_backoff, attempt, unit)
}

/// `initial` doubled per failed attempt after the first, capped at `max`, scaled by
/// `0.5 + unit` (±50 % jitter for `unit` uniform in [0, 1)).
pub(crate) fn backoff_delay(initial: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let doubled = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

struct Worker {
    client: Client,
    meeting_id: String,
    config: SenderConfig,
    reports: mpsc::Sender<SendReport>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut open = true;
        while open {
            let mut batch = Vec::with_capacity(self.config.max_batch_chunks);
            let mut flushed = Vec::new();
            match rx.recv().await {
                None => return,
                Some(Command::Flush(done)) => {
                    let _ = done.send(());
                    continue;
                }
                Some(Command::Chunk(c)) => batch.push(c),
            }
            let deadline = tokio::time::Instant::now() + self.config.window;
            while batch.len() < self.config.max_batch_chunks {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Command::Chunk(c)) => batch.push(c),
                        Some(Command::Flush(done)) => {
                            flushed.push(done);
                            break;
                        }
                        None => {
                            open = false;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let report = self.send_batch(batch).await;
            // A closed report channel means nobody listens; the chunks are sent regardless.
            let _ = self.reports.send(report).await;
            for done in flushed {
                let _ = done.send(());
            }
        }
    }

    /// Sends one batch, retrying transient failures under one mutation id (the server runs it
    /// at most once) with the same chunk ids (stored at most once even across mutation ids).
    async fn send_batch(&self, chunks: Vec<ChunkInput>) -> SendReport {
        debug_assert!(!chunks.is_empty() && chunks.len() <= MAX_BATCH_CHUNKS);
        let args = IngestBatchArgs {
            meeting_id: self.meeting_id.clone(),
            chunks,
        };
        let value = match query_engine::json::to_value(&args) {
            Ok(v) => v,
            Err(e) => {
                return SendReport::Failed {
                    chunks: args.chunks,
                    error: ClientError::Encode(e.to_string()),
                    attempts: 0,
                }
            }
        };
        let mutation_id = new_mutation_id();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self
                .client
                // `call`, not `mutation_with_id`: this loop is the retry policy, shedding
                // included.
                .call(
                    CallKind::Mutation,
                    fns::INGEST_BATCH,
                    value.clone(),
                    Some(mutation_id.clone()),
                )
                .await
            {
                Ok(reply) => match acks(&args.chunks, &reply.value) {
                    Ok(acks) => return SendReport::Stored { acks, attempts },
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let wait = match classify(&error) {
                _ if attempts >= self.config.max_attempts => None,
                Retry::Never => None,
                Retry::Backoff => Some(backoff(&self.config, attempts, rand::random())),
                Retry::After(d) => Some(
                    d.max(backoff(&self.config, attempts, rand::random()))
                        .min(self.config.max_retry_after),
                ),
            };
            let Some(wait) = wait else {
                return SendReport::Failed {
                    chunks: args.chunks,
                    error,
                    attempts,
                };
            };
            tracing::debug!(error = %error, attempts, ?wait, "transcript batch failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Pairs a batch's chunks with the sequences the server returned.
fn acks(chunks: &[ChunkInput], value: &Value) -> Result<Vec<ChunkAck>, ClientError> {
    let result: BatchResult =
        query_engine::json::from_value(value).map_err(|e| ClientError::Decode(e.to_string()))?;
    if result.sequences.len() != chunks.len() {
        return Err(ClientError::Decode(format!(
            "ingestBatch returned {} sequences for {} chunks",
            result.sequences.len(),
            chunks.len()
        )));
    }
    // The server reports how many chunks were retries, not which. The new chunks of one call
    // get consecutive sequences ending at the call's largest, and a retried chunk kept the
    // sequence an earlier call gave it, which is smaller; so the retries are the chunks below
    // that run. (A chunk id repeated inside one batch is counted but not marked.)
    let duplicates = usize::try_from(result.duplicates).unwrap_or(0);
    let mut acks: Vec<ChunkAck> = chunks
        .iter()
        .zip(&result.sequences)
        .map(|(c, &sequence)| ChunkAck {
            chunk_id: c.chunk_id.clone(),
            sequence,
            duplicate: false,
        })
        .collect();
    if duplicates > 0 {
        let max = result.sequences.iter().copied().max().unwrap_or(0);
        let fresh = (acks.len() - duplicates.min(acks.len())) as i64;
        // Checked: the sequences are the server's word, and a hostile one must not overflow.
        let last_retried = max.checked_sub(fresh).ok_or_else(|| {
            ClientError::Decode(format!(
                "ingestBatch returned {max} as its largest sequence, too small for {fresh} new chunks"
            ))
        })?;
        for a in &mut acks {
            a.duplicate = a.sequence <= last_retried;
        }
    }
    Ok(acks)
}

/// Default live window of a `TranscriptStream`. Every chunk stored re-runs the window's query
/// on the server, which reads the whole window so far (half of it on average), so the live
/// window is a trade between that re-read and one re-subscription per full window: in the
/// fan-out benchmark the subscription worker spent ~120 µs per chunk with windows of 200 and
/// ~90 µs with 50, and server + harness CPU per chunk was 2.8 % lower with 20 than with 50
/// (4 alternating runs each at 3,000 chunks/s). A backlog is read in windows of
/// `MAX_STREAM_LIMIT` instead (one round trip each), where nothing is re-run.
pub const DEFAULT_STREAM_LIMIT: i64 = 20;
const _: () = assert!(DEFAULT_STREAM_LIMIT <= MAX_STREAM_LIMIT);

impl Client {
    /// A meeting's transcript from just after `from_sequence` (0: from the start), live: see
    /// [`TranscriptStream`].
    pub fn transcript_stream(
        &self,
        meeting_id: &str,
        from_sequence: i64,
    ) -> Result<TranscriptStream, ClientError> {
        TranscriptStream::new(self, meeting_id, from_sequence, DEFAULT_STREAM_LIMIT)
    }
}

/// A meeting's transcript chunks in sequence order, each exactly once, as they are stored.
///
/// It subscribes to `transcripts.stream` anchored at the last sequence it delivered; the
/// window's results only grow, so a slow reader (which sees only a subscription's latest
/// result) and a reconnect (after which the SDK re-subscribes and gets the window again) lose
/// nothing, and chunks already delivered are skipped. A full window is never re-run by the
/// server, so the stream then re-anchors at its last chunk. Windows are `limit` chunks while
/// following live; a subscription whose first result is already full has a backlog to read,
/// which the stream reads in windows of `MAX_STREAM_LIMIT` until a first result is not full. A gap in sequences makes it
/// re-subscribe; a gap that a fresh subscription confirms (chunks deleted on the server) is
/// reported as one `Err(Protocol)` and the stream goes on after it. A query failure (e.g.
/// `FORBIDDEN`) is yielded as an `Err` and ends the stream; resume with a new stream from
/// [`last_sequence`](Self::last_sequence). Holds a clone of the client.
pub struct TranscriptStream {
    client: Client,
    meeting_id: String,
    /// The live window.
    limit: i64,
    /// The current subscription's window: `limit`, or `MAX_STREAM_LIMIT` while reading a
    /// backlog.
    window: i64,
    /// Sequence of the last chunk queued in `ready` (or handed out): the anchor.
    last: i64,
    /// Sequence of the last chunk handed out.
    delivered: i64,
    sub: Option<Subscription>,
    /// Whether the current subscription has produced a result yet.
    sub_fresh: bool,
    /// Set when a gap made us re-subscribe; a gap on the fresh subscription is then real.
    gap_resubscribed: bool,
    /// Items decoded from the last result, not yet yielded; at most `window` + 1.
    ready: VecDeque<Result<Chunk, ClientError>>,
    ended: bool,
}

impl std::fmt::Debug for TranscriptStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptStream")
            .field("meeting_id", &self.meeting_id)
            .field("last", &self.last)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl TranscriptStream {
    /// A stream with live windows of `limit` chunks (1..=200).
    pub fn new(
        client: &Client,
        meeting_id: &str,
        from_sequence: i64,
        limit: i64,
    ) -> Result<TranscriptStream, ClientError> {
        if !(1..=MAX_STREAM_LIMIT).contains(&limit) || from_sequence < 0 {
            return Err(ClientError::Encode(format!(
                "limit must be 1..={MAX_STREAM_LIMIT} and fromSequence non-negative, got {limit} and {from_sequence}"
            )));
        }
        let mut stream = TranscriptStream {
            client: client.clone(),
            meeting_id: meeting_id.to_string(),
            limit,
            window: limit,
            last: from_sequence,
            delivered: from_sequence,
            sub: None,
            sub_fresh: true,
            gap_resubscribed: false,
            ready: VecDeque::new(),
            ended: false,
        };
        stream.resubscribe()?;
        Ok(stream)
    }

    /// The sequence of the last chunk yielded: a new stream from it resumes without loss.
    pub fn last_sequence(&self) -> i64 {
        self.last - self.ready.iter().filter(|item| item.is_ok()).count() as i64
    }

    /// Replaces the subscription with one anchored at `self.last`. The new one is made before
    /// the old one is dropped, so the server never holds neither.
    fn resubscribe(&mut self) -> Result<(), ClientError> {
        let args = query_engine::obj! {
            "meetingId" => self.meeting_id.as_str(),
            "fromSequence" => self.last,
            "limit" => self.window,
        };
        let sub = self.client.subscribe(fns::STREAM, &args)?;
        self.sub = Some(sub);
        self.sub_fresh = true;
        Ok(())
    }

    /// Queues the new chunks of one result; decides whether to re-anchor.
    fn absorb(&mut self, value: Value) -> Result<(), ClientError> {
        let chunks: Vec<Chunk> = query_engine::json::from_value(&value)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let fresh = std::mem::replace(&mut self.sub_fresh, false);
        let full = chunks.len() as i64 >= self.window;
        for c in chunks {
            if c.sequence <= self.last {
                continue; // delivered already (a window re-sent after a reconnect or a change)
            }
            if c.sequence != self.last + 1 {
                if !(fresh && self.gap_resubscribed) {
                    // Re-read from the last delivered sequence: a fresh snapshot tells
                    // whether the gap is real.
                    self.gap_resubscribed = true;
                    return self.resubscribe();
                }
                self.ready.push_back(Err(ClientError::Protocol(format!(
                    "transcript of meeting {} has no chunks {}..={}",
                    self.meeting_id,
                    self.last + 1,
                    c.sequence - 1
                ))));
            }
            self.gap_resubscribed = false;
            self.last = c.sequence;
            self.ready.push_back(Ok(c));
        }
        if full {
            // The server never changes a full window: move on from its last chunk, in large
            // windows while the first result of each comes full (a backlog), else live ones.
            self.window = if fresh { MAX_STREAM_LIMIT } else { self.limit };
            self.resubscribe()?;
        } else if fresh && self.window > self.limit {
            // Caught up after a backlog: follow in live windows, which the server re-runs.
            self.window = self.limit;
            self.resubscribe()?;
        }
        Ok(())
    }
}

impl Stream for TranscriptStream {
    type Item = Result<Chunk, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                if let Ok(chunk) = &item {
                    this.delivered = chunk.sequence;
                }
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let Some(sub) = this.sub.as_mut() else {
                if let Err(e) = this.resubscribe() {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                continue;
            };
            match Pin::new(sub).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.sub = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(value))) => {
                    if let Err(e) = this.absorb(value) {
                        this.ended = true;
                        this.sub = None;
                        this.ready.push_back(Err(e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: &str) -> ChunkInput {
        ChunkInput {
            chunk_id: id.into(),
            speaker_id: None,
            text: "hello".into(),
            confidence: 0.9,
            start_ms: 0,
            end_ms: 10,
        }
    }

    #[test]
    fn config_bounds_are_checked() {
        assert!(SenderConfig::default().validate().is_ok());
        for ms in [49, 251, 0] {
            let c = SenderConfig {
                window: Duration::from_millis(ms),
                ..SenderConfig::default()
            };
            assert!(matches!(c.validate(), Err(TranscriptError::Config(_))));
        }
        for ms in [50, 100, 250] {
            let c = SenderConfig {
                window: Duration::from_millis(ms),
                ..SenderConfig::default()
            };
            assert!(c.validate().is_ok());
        }
        let c = SenderConfig {
            max_batch_chunks: 51,
            ..SenderConfig::default()
        };
        assert!(c.validate().is_err());
        let c = SenderConfig {
            max_attempts: 0,
            ..SenderConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn chunks_are_checked_before_queueing() {
        assert!(check_chunk(&chunk("a")).is_ok());
        let mut c = chunk("");
        assert!(matches!(
            check_chunk(&c),
            Err(TranscriptError::InvalidChunk {
                field: "chunkId",
                ..
            })
        ));
        c = chunk("a");
        c.confidence = 1.5;
        assert!(check_chunk(&c).is_err());
        c = chunk("a");
        c.start_ms = 11;
        assert!(check_chunk(&c).is_err());
        c = chunk("a");
        c.text = "x".repeat(MAX_CHUNK_TEXT_CHARS + 1);
        assert!(check_chunk(&c).is_err());
        c.text = "👍".repeat(MAX_CHUNK_TEXT_CHARS);
        assert!(check_chunk(&c).is_ok());
    }

    fn function_error(code: &str, data: Value) -> ClientError {
        ClientError::Function {
            code: code.into(),
            message: String::new(),
            data,
        }
    }

    #[test]
    fn errors_are_classified_for_retry() {
        assert_eq!(classify(&ClientError::Disconnected), Retry::Backoff);
        assert_eq!(
            classify(&ClientError::MutationUnconfirmed {
                mutation_id: "m".into()
            }),
            Retry::Backoff
        );
        assert_eq!(
            classify(&function_error("INTERNAL", Value::Null)),
            Retry::Backoff
        );
        assert_eq!(
            classify(&function_error("SOMETHING_NEW", Value::Null)),
            Retry::Backoff
        );
        assert_eq!(
            classify(&function_error(
                "RATE_LIMITED",
                query_engine::obj! {"retryAfterMs" => 1500i64}
            )),
            Retry::After(Duration::from_millis(1500))
        );
        assert_eq!(
            classify(&function_error("RATE_LIMITED", Value::Null)),
            Retry::Backoff
        );
        for code in ["VALIDATION_ERROR", "FORBIDDEN", "MEETING_NOT_ACTIVE"] {
            assert_eq!(classify(&function_error(code, Value::Null)), Retry::Never);
        }
        assert_eq!(classify(&ClientError::Closed), Retry::Never);
        assert_eq!(
            MEETING_NOT_ACTIVE,
            linkedup_schema::ErrorCode::MeetingNotActive.as_str()
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = SenderConfig::default();
        assert_eq!(backoff(&c, 1, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(&c, 2, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(&c, 3, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(&c, 40, 0.5), c.max_backoff);
        assert!(backoff(&c, 40, 0.999) <= c.max_backoff.mul_f64(1.5));
        assert_eq!(backoff(&c, 1, 0.0), Duration::from_millis(25));
    }

    #[test]
    fn acks_mark_earlier_stored_chunks_as_duplicates() {
        let chunks = vec![chunk("a"), chunk("b"), chunk("c")];
        let value = query_engine::obj! {
            "sequences" => vec![Value::from(4i64), Value::from(9i64), Value::from(10i64)],
            "duplicates" => 1i64,
        };
        let acks = acks(&chunks, &value).unwrap();
        assert_eq!(
            acks.iter()
                .map(|a| (a.chunk_id.as_str(), a.sequence, a.duplicate))
                .collect::<Vec<_>>(),
            vec![("a", 4, true), ("b", 9, false), ("c", 10, false)]
        );
        let all_retried = query_engine::obj! {
            "sequences" => vec![Value::from(1i64), Value::from(2i64), Value::from(3i64)],
            "duplicates" => 3i64,
        };
        assert!(acks_all_duplicate(&chunks, &all_retried));
        let short = query_engine::obj! {
            "sequences" => vec![Value::from(1i64)],
            "duplicates" => 0i64,
        };
        assert!(matches!(
            self::acks(&chunks, &short),
            Err(ClientError::Decode(_))
        ));
    }

    /// Sequences at the ends of the range neither overflow nor panic: all retried at
    /// `i64::MAX` is fine, new chunks below `i64::MIN` are a decode error.
    #[test]
    fn acks_of_hostile_sequences_do_not_overflow() {
        let chunks = vec![chunk("a"), chunk("b"), chunk("c")];
        let sequences = |s: i64| vec![Value::from(s), Value::from(s), Value::from(s)];
        let all_retried_at_max = query_engine::obj! {
            "sequences" => sequences(i64::MAX),
            "duplicates" => 3i64,
        };
        assert!(acks_all_duplicate(&chunks, &all_retried_at_max));
        let new_below_min = query_engine::obj! {
            "sequences" => sequences(i64::MIN),
            "duplicates" => 1i64,
        };
        assert!(matches!(
            acks(&chunks, &new_below_min),
            Err(ClientError::Decode(_))
        ));
    }

    fn acks_all_duplicate(chunks: &[ChunkInput], value: &Value) -> bool {
        acks(chunks, value).unwrap().iter().all(|a| a.duplicate)
    }
}
