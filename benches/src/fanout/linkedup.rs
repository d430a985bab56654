//! The LinkedUp side of the benchmark: real SDK clients over QUIC. Sets up users (one per
//! connection, since identity is per connection), meetings (each scheduled and started by its
//! first producer, with the other producers and its subscribers' users invited), and runs
//! subscribers on `transcripts.stream(meetingId, fromSequence, limit)` with the resumable
//! pattern; writes go through `transcripts.ingestChunk`.

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use linkedup_client::client::shared_endpoint;
use linkedup_client::{
    new_mutation_id, CallKind, Client, ClientError, ClientOptions, ReconnectPolicy, Subscription,
    Trust, Value,
};
use linkedup_schema::api::{EnsureUserArgs, MeetingIdArgs, ScheduleMeetingArgs};
use linkedup_server::linkedup::transcripts::{
    fns, BatchResult, ChunkInput, IngestBatchArgs, IngestChunkArgs, StreamArgs, MAX_BATCH_CHUNKS,
    MAX_STREAM_LIMIT,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checker::SequenceTracker;
use super::driver::{parse_sched_us, WriteFn};
use super::procstat::ProcWatch;
use super::recorder::{now_us, Recorder};
use super::server::Target;
use super::stalled::{StalledClient, StalledError};
use super::FanoutSystem;

/// Connections opened, users ensured and meetings made at once during setup.
const SETUP_PARALLELISM: usize = 32;
/// Most invitees `meetings.schedule` takes.
const MAX_INVITEES: usize = 50;
/// Pause before re-subscribing after a subscription failed.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(100);
/// QUIC endpoints (UDP socket + driver task) the harness's clients share, round-robin. One per
/// client costs a socket, a task and their buffers each: gigabytes for thousands of producers.
const CLIENT_ENDPOINTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("connecting {who}: {source}")]
    Connect { who: String, source: ClientError },
    #[error("{call} for {who}: {source}")]
    Call {
        call: &'static str,
        who: String,
        source: ClientError,
    },
    #[error("a meeting needs {0} invitees; meetings.schedule takes at most {MAX_INVITEES}")]
    TooManyInvitees(usize),
    #[error("users.ensure returned no _id")]
    NoUserId,
    #[error("subscribing: {0}")]
    Subscribe(ClientError),
    #[error("invalid plan: {0}")]
    Plan(&'static str),
    #[error("binding client endpoints for {addr}: {reason}")]
    Endpoint { addr: String, reason: String },
}

/// The shape of the fleet.
#[derive(Clone, Debug)]
pub struct FleetPlan {
    pub meetings: usize,
    /// Load subscribers per meeting.
    pub subscribers: usize,
    /// Producer users per meeting (each its own connection; the first is the host).
    pub producers: usize,
    /// Connections the load subscribers are spread over.
    pub connections: usize,
    /// `limit` of each stream subscription (its window).
    pub window: usize,
    /// Extra clients with one subscription each, for the reconnect storm.
    pub storm_clients: usize,
    /// Most sequences per meeting whose commit time is remembered.
    pub max_seq: usize,
}

/// Wire code of a client error, or its kind.
pub fn error_code(e: &ClientError) -> String {
    if e.is_overloaded() {
        return "OVERLOADED".into();
    }
    match e.code() {
        Some(c) => c.to_string(),
        None => match e {
            ClientError::Disconnected => "DISCONNECTED".into(),
            ClientError::MutationUnconfirmed { .. } => "MUTATION_UNCONFIRMED".into(),
            ClientError::Closed => "CLOSED".into(),
            ClientError::Connect(_) => "CONNECT".into(),
            ClientError::Protocol(_) => "PROTOCOL".into(),
            ClientError::Decode(_) => "DECODE".into(),
            _ => "CLIENT".into(),
        },
    }
}

/// Client options pinning the target's certificate, signed in as `subject`.
pub fn client_options(target: &Target, subject: &str) -> ClientOptions {
    let mut o = ClientOptions::new(Trust::PinnedSha256(target.fingerprint))
        .with_token(target.token(subject))
        .with_client_name("fanout-bench")
        .with_reconnect(ReconnectPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_attempts: Some(50),
            jitter: 0.5,
        });
    o.connect_timeout = Duration::from_secs(30);
    o.idle_timeout = Duration::from_secs(30);
    o
}

/// `CLIENT_ENDPOINTS` client endpoints suited to reaching the target.
pub async fn client_endpoints(target: &Target) -> Result<Vec<quinn::Endpoint>, SetupError> {
    let err = |reason: String| SetupError::Endpoint {
        addr: target.addr.clone(),
        reason,
    };
    let server = tokio::net::lookup_host(target.addr.as_str())
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))?;
    let mut endpoints = Vec::with_capacity(CLIENT_ENDPOINTS);
    for _ in 0..CLIENT_ENDPOINTS {
        endpoints.push(shared_endpoint(server).map_err(|e| err(e.to_string()))?);
    }
    Ok(endpoints)
}

async fn connect_all(
    target: &Target,
    endpoints: &[quinn::Endpoint],
    subjects: &[String],
) -> Result<Vec<Client>, SetupError> {
    let results: Vec<Result<Client, SetupError>> = stream::iter(subjects.iter().cloned())
        .enumerate()
        .map(|(i, s)| async move {
            let mut options = client_options(target, &s);
            if !endpoints.is_empty() {
                options = options.with_endpoint(endpoints[i % endpoints.len()].clone());
            }
            Client::connect(&target.addr, options)
                .await
                .map_err(|source| SetupError::Connect { who: s, source })
        })
        .buffered(SETUP_PARALLELISM)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn ensure_all(clients: &[Client]) -> Result<Vec<String>, SetupError> {
    let results: Vec<Result<String, SetupError>> = stream::iter(clients.iter().enumerate())
        .map(|(i, c)| async move {
            let user: Value = c
                .mutation(
                    "users.ensure",
                    &EnsureUserArgs {
                        display_name: Some(format!("fanout {i}")),
                    },
                )
                .await
                .map_err(|source| SetupError::Call {
                    call: "users.ensure",
                    who: format!("client {i}"),
                    source,
                })?;
            user.get_path("_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(SetupError::NoUserId)
        })
        .buffered(SETUP_PARALLELISM)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Gives each meeting a backlog of 0 to `window - 1` chunks (uniformly at random), written by
/// its host through `transcripts.ingestBatch` before any subscriber starts: meetings in
/// progress, as in a real deployment. Without it every meeting starts empty and takes writes at
/// the same mean rate, so all windows fill — and all subscribers re-subscribe — within the same
/// second, a synchronised burst no real set of meetings produces. Returns each meeting's
/// stored sequences.
async fn seed_backlog(
    producers: &[Vec<Client>],
    meeting_ids: &[String],
    window: usize,
) -> Result<Vec<Vec<i64>>, SetupError> {
    let results: Vec<Result<Vec<i64>, SetupError>> = stream::iter(meeting_ids.iter().enumerate())
        .map(|(m, id)| async move {
            let mut sequences = Vec::new();
            let chunks: Vec<ChunkInput> = (0..rand::random::<usize>() % window)
                .map(|i| ChunkInput {
                    chunk_id: format!("backlog-{i}"),
                    speaker_id: None,
                    text: format!("backlog chunk {i}"),
                    confidence: 1.0,
                    start_ms: i as i64 * 1_000,
                    end_ms: i as i64 * 1_000 + 900,
                })
                .collect();
            for batch in chunks.chunks(MAX_BATCH_CHUNKS) {
                let stored: BatchResult = producers[m][0]
                    .mutation(
                        fns::INGEST_BATCH,
                        &IngestBatchArgs {
                            meeting_id: id.clone(),
                            chunks: batch.to_vec(),
                        },
                    )
                    .await
                    .map_err(|source| SetupError::Call {
                        call: fns::INGEST_BATCH,
                        who: format!("meeting {m}"),
                        source,
                    })?;
                sequences.extend(stored.sequences);
            }
            Ok(sequences)
        })
        .buffered(SETUP_PARALLELISM)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A subscription that must never change after its first result.
async fn idle_subscriber(
    mut sub: Subscription,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            item = sub.next() => match item {
                None => return,
                Some(Err(e)) => {
                    recorder.write_failed(&format!("idle stream {}", error_code(&e)));
                    return;
                }
                Some(Ok(_)) if first => first = false,
                Some(Ok(_)) => recorder.idle_wakeup(),
            }
        }
    }
}

/// One load subscriber: follows its meeting's stream window by window.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    client: Client,
    meeting: usize,
    meeting_id: String,
    index: usize,
    window: usize,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tracker = SequenceTracker::default();
    // The last window and its sequences: a chunk that is the very same shared object as in
    // the last window is unchanged, so its sequence is known without reading its fields
    // (reading them for all ~50 chunks on every delivery was ~15 % of the harness's CPU).
    let mut last: (Vec<Value>, Vec<Option<i64>>) = Default::default();
    loop {
        let args = StreamArgs {
            meeting_id: meeting_id.clone(),
            from_sequence: Some(tracker.window_from()),
            limit: Some(window as i64),
        };
        let mut sub = match client.subscribe(fns::STREAM, &args) {
            Ok(s) => s,
            Err(e) => {
                recorder.write_failed(&format!("subscribe {}", error_code(&e)));
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                _ = stop.changed() => return,
                item = sub.next() => item,
            };
            let value = match item {
                None => break,
                Some(Err(e)) => {
                    recorder.write_failed(&format!("stream {}", error_code(&e)));
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                    break;
                }
                Some(Ok(v)) => v,
            };
            let recv_us = now_us();
            let chunks = match value {
                Value::Array(chunks) => chunks,
                _ => Vec::new(),
            };
            let before = tracker.anomalies();
            let seqs = sequences(&chunks, &last);
            let full = tracker.on_window(seqs.iter().copied(), window, |i| {
                let sched = chunks[i]
                    .get_path("text")
                    .and_then(Value::as_str)
                    .and_then(parse_sched_us)
                    .unwrap_or(0);
                recorder.delivered(index, meeting, seqs[i].unwrap_or(0), sched, None, recv_us);
            });
            last = (chunks, seqs);
            let after = tracker.anomalies();
            recorder.add_anomalies(super::anomalies_minus(after, before));
            recorder.set_progress(index, tracker.last_seq());
            if full {
                tracker.rewindow();
                last = Default::default();
                break;
            }
        }
    }
}

/// The `sequence` of each chunk of a window; a chunk that is the same shared object at the
/// same position of the `last` window (still held there, so its address cannot have been
/// reused) takes its sequence from there.
fn sequences(chunks: &[Value], last: &(Vec<Value>, Vec<Option<i64>>)) -> Vec<Option<i64>> {
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| match (c, last.0.get(i)) {
            (Value::Object(now), Some(Value::Object(then))) if Arc::ptr_eq(now, then) => last.1[i],
            _ => c.get_path("sequence").and_then(Value::as_i64),
        })
        .collect()
}

/// Meetings, clients and subscribers on a LinkedUp server.
pub struct LinkedUpFleet {
    name: String,
    target: Target,
    plan: FleetPlan,
    meeting_ids: Vec<String>,
    /// `[meeting][producer]`.
    producers: Vec<Vec<Client>>,
    sub_clients: Vec<Client>,
    sub_subjects: Vec<String>,
    storm_clients: Vec<Client>,
    /// Meetings whose participants include each load connection's user.
    meetings_of_connection: Vec<Vec<usize>>,
    subscriber_meetings: Vec<usize>,
    recorder: Arc<Recorder>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    proc_watch: Option<ProcWatch>,
    idle_count: usize,
}

impl LinkedUpFleet {
    /// Connects every client (the storm's too), creates users and meetings, and starts the
    /// load subscribers (the storm's start with `start_storm_subscribers`). Subjects are
    /// prefixed with a random run id so repeated runs against one server do not collide.
    pub async fn setup(
        target: Target,
        plan: FleetPlan,
        proc_watch: Option<ProcWatch>,
    ) -> Result<Self, SetupError> {
        if plan.meetings == 0 || plan.connections == 0 || plan.producers == 0 || plan.window == 0 {
            return Err(SetupError::Plan(
                "meetings, connections, producers and window must be positive",
            ));
        }
        let run = format!("{:08x}", rand::random::<u32>());
        let (m_count, s_count, c_count) = (plan.meetings, plan.subscribers, plan.connections);
        let producer_subjects: Vec<String> = (0..m_count * plan.producers)
            .map(|i| format!("fanout-{run}-p{i}"))
            .collect();
        let sub_subjects: Vec<String> =
            (0..c_count).map(|c| format!("fanout-{run}-s{c}")).collect();
        let storm_subjects: Vec<String> = (0..plan.storm_clients)
            .map(|k| format!("fanout-{run}-r{k}"))
            .collect();
        let endpoints = client_endpoints(&target).await?;
        let producer_clients = connect_all(&target, &endpoints, &producer_subjects).await?;
        let sub_clients = connect_all(&target, &endpoints, &sub_subjects).await?;
        let storm_clients = connect_all(&target, &endpoints, &storm_subjects).await?;
        let producer_ids = ensure_all(&producer_clients).await?;
        let sub_ids = ensure_all(&sub_clients).await?;
        let storm_ids = ensure_all(&storm_clients).await?;

        let connection_of = |m: usize, s: usize| (m * s_count + s) % c_count;
        let mut meetings_of_connection = vec![Vec::new(); c_count];
        let mut invitees: Vec<Vec<String>> = Vec::with_capacity(m_count);
        for m in 0..m_count {
            let mut inv: Vec<String> = (1..plan.producers)
                .map(|p| producer_ids[m * plan.producers + p].clone())
                .collect();
            for s in 0..s_count {
                let c = connection_of(m, s);
                if !inv.contains(&sub_ids[c]) {
                    inv.push(sub_ids[c].clone());
                    meetings_of_connection[c].push(m);
                }
            }
            for k in (m..plan.storm_clients).step_by(m_count) {
                inv.push(storm_ids[k].clone());
            }
            if inv.len() > MAX_INVITEES {
                return Err(SetupError::TooManyInvitees(inv.len()));
            }
            invitees.push(inv);
        }
        let mut producers: Vec<Vec<Client>> = Vec::with_capacity(m_count);
        let mut it = producer_clients.into_iter();
        for _ in 0..m_count {
            producers.push(it.by_ref().take(plan.producers).collect());
        }
        let results: Vec<Result<String, SetupError>> = stream::iter(0..m_count)
            .map(|m| {
                let host = producers[m][0].clone();
                let inv = invitees[m].clone();
                let run = run.clone();
                async move {
                    let call_err = |call: &'static str| {
                        move |source| SetupError::Call {
                            call,
                            who: format!("meeting {m}"),
                            source,
                        }
                    };
                    let id: String = host
                        .mutation(
                            "meetings.schedule",
                            &ScheduleMeetingArgs {
                                title: format!("fanout {run} meeting {m}"),
                                description: None,
                                scheduled_at: None,
                                duration: None,
                                invitee_ids: Some(inv),
                                idempotency_key: None,
                            },
                        )
                        .await
                        .map_err(call_err("meetings.schedule"))?;
                    let _: Value = host
                        .mutation(
                            "meetings.start",
                            &MeetingIdArgs {
                                meeting_id: id.clone(),
                            },
                        )
                        .await
                        .map_err(call_err("meetings.start"))?;
                    Ok(id)
                }
            })
            .buffered(SETUP_PARALLELISM)
            .collect()
            .await;
        let meeting_ids: Vec<String> = results.into_iter().collect::<Result<_, _>>()?;
        let backlog = seed_backlog(&producers, &meeting_ids, plan.window).await?;

        let mut subscriber_meetings: Vec<usize> = Vec::new();
        for m in 0..m_count {
            for _ in 0..s_count {
                subscriber_meetings.push(m);
            }
        }
        let recorder = Arc::new(Recorder::new(
            m_count,
            subscriber_meetings.len() + plan.storm_clients,
            plan.max_seq + plan.window,
        ));
        for (m, sequences) in backlog.iter().enumerate() {
            for &seq in sequences {
                recorder.write_ok(m, seq, false, None, 0);
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for m in 0..m_count {
            for s in 0..s_count {
                tasks.push(tokio::spawn(subscriber(
                    sub_clients[connection_of(m, s)].clone(),
                    m,
                    meeting_ids[m].clone(),
                    m * s_count + s,
                    plan.window,
                    recorder.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        Ok(LinkedUpFleet {
            name: "LinkedUp (QUIC)".into(),
            target,
            plan,
            meeting_ids,
            producers,
            sub_clients,
            sub_subjects,
            storm_clients,
            meetings_of_connection,
            subscriber_meetings,
            recorder,
            stop,
            tasks,
            proc_watch,
            idle_count: 0,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn plan(&self) -> &FleetPlan {
        &self.plan
    }

    pub fn meeting_ids(&self) -> &[String] {
        &self.meeting_ids
    }

    pub fn idle_subscriptions(&self) -> usize {
        self.idle_count
    }

    /// Adds `count` subscriptions that never change: streams of the loaded meetings from a
    /// sequence far beyond anything written, each with distinct arguments (so none share an
    /// execution), spread over the load connections. Returns once each has its first result.
    pub async fn add_idle(&mut self, count: usize) -> Result<(), SetupError> {
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1024);
        let c_count = self.sub_clients.len();
        for i in 0..count {
            let c = i % c_count;
            let mine = &self.meetings_of_connection[c];
            let Some(&m) = mine.get((i / c_count) % mine.len().max(1)) else {
                return Err(SetupError::Plan("a connection without meetings"));
            };
            let args = StreamArgs {
                meeting_id: self.meeting_ids[m].clone(),
                from_sequence: Some(1_000_000_000_000 + (self.idle_count + i) as i64),
                limit: Some(self.plan.window as i64),
            };
            let mut sub = self.sub_clients[c]
                .subscribe(fns::STREAM, &args)
                .map_err(SetupError::Subscribe)?;
            let recorder = self.recorder.clone();
            let stop = self.stop.subscribe();
            let ready = ready_tx.clone();
            self.tasks.push(tokio::spawn(async move {
                match sub.next().await {
                    Some(Ok(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Some(Err(e)) => {
                        recorder.write_failed(&format!("idle subscribe {}", error_code(&e)));
                        let _ = ready.send(()).await;
                        return;
                    }
                    None => return,
                }
                drop(ready);
                idle_subscriber(sub, recorder, stop).await;
            }));
        }
        drop(ready_tx);
        let mut got = 0;
        while got < count {
            match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
                Ok(Some(())) => got += 1,
                _ => break,
            }
        }
        self.idle_count += count;
        Ok(())
    }

    /// A subscriber that stops reading (see `stalled`): signed in as the first load
    /// connection's user, subscribed to the stream of every meeting that user is in, from the
    /// current sequence with the largest window, so every write to those meetings is owed to it.
    pub async fn connect_stalled(&self) -> Result<StalledClient, StalledError> {
        let subs: Vec<(String, Value)> = self.meetings_of_connection[0]
            .iter()
            .filter_map(|&m| {
                query_engine::json::to_value(&StreamArgs {
                    meeting_id: self.meeting_ids[m].clone(),
                    from_sequence: Some(self.recorder.acked_seq(m)),
                    limit: Some(MAX_STREAM_LIMIT),
                })
                .ok()
                .map(|args| (fns::STREAM.to_string(), args))
            })
            .collect();
        StalledClient::connect(&self.target, &self.sub_subjects[0], &subs).await
    }

    /// Starts one subscriber per storm client, on meeting k mod M, from the meeting's first
    /// chunk. Only for the storm: started with the fleet, they were a sixth subscriber of every
    /// meeting in every other step (the PostgreSQL peer's meetings have five). Callers wait for
    /// them to be current (`wait_current`) before measuring. A second call does nothing.
    pub fn start_storm_subscribers(&mut self) {
        let (m_count, s_count) = (self.plan.meetings, self.plan.subscribers);
        if self.subscriber_meetings.len() > m_count * s_count {
            return;
        }
        let stop = self.stop.subscribe();
        for (k, client) in self.storm_clients.iter().enumerate() {
            let m = k % m_count;
            self.subscriber_meetings.push(m);
            self.tasks.push(tokio::spawn(subscriber(
                client.clone(),
                m,
                self.meeting_ids[m].clone(),
                m_count * s_count + k,
                self.plan.window,
                self.recorder.clone(),
                stop.clone(),
            )));
        }
    }

    /// Drops every storm client's connection at once and measures the time until each of
    /// them again holds every sequence its meeting had acknowledged at the drop. Returns
    /// (time, clients still behind at `timeout`, clients that did reconnect).
    pub async fn reconnect_storm(&self, timeout: Duration) -> (Duration, u64, u64) {
        let first = self.plan.meetings * self.plan.subscribers;
        let targets: Vec<(usize, i64)> = (0..self.storm_clients.len())
            .map(|k| {
                let m = k % self.plan.meetings;
                (first + k, self.recorder.acked_seq(m))
            })
            .collect();
        let before: Vec<u64> = self
            .storm_clients
            .iter()
            .map(|c| c.connection_count())
            .collect();
        let started = std::time::Instant::now();
        for c in &self.storm_clients {
            c.force_reconnect();
        }
        // Wait for the reconnections themselves, then for the data.
        loop {
            let reconnected = self
                .storm_clients
                .iter()
                .zip(&before)
                .filter(|(c, b)| c.connection_count() > **b && c.is_connected())
                .count();
            let behind = targets
                .iter()
                .filter(|(j, seq)| self.recorder.progress(*j) < *seq)
                .count() as u64;
            if (reconnected == self.storm_clients.len() && behind == 0)
                || started.elapsed() >= timeout
            {
                return (started.elapsed(), behind, reconnected as u64);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the subscribers and closes every client.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let all = self
            .producers
            .iter()
            .flatten()
            .chain(&self.sub_clients)
            .chain(&self.storm_clients);
        stream::iter(all)
            .for_each_concurrent(SETUP_PARALLELISM, |c| async move { c.close().await })
            .await;
    }
}

impl FanoutSystem for LinkedUpFleet {
    fn name(&self) -> &str {
        &self.name
    }

    fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    fn writer(&self) -> WriteFn {
        let producers = Arc::new(self.producers.clone());
        let meeting_ids = Arc::new(self.meeting_ids.clone());
        let recorder = self.recorder.clone();
        Arc::new(move |m, p, sched_us, text| {
            let client = producers[m][p].clone();
            let meeting_id = meeting_ids[m].clone();
            let recorder = recorder.clone();
            Box::pin(async move {
                let args = IngestChunkArgs {
                    meeting_id,
                    chunk_id: text
                        .split(' ')
                        .skip(1)
                        .take(3)
                        .collect::<Vec<_>>()
                        .join("-"),
                    speaker_id: None,
                    text,
                    confidence: 0.9,
                    start_ms: 0,
                    end_ms: 1,
                };
                let value = match query_engine::json::to_value(&args) {
                    Ok(v) => v,
                    Err(_) => {
                        recorder.write_failed("ENCODE");
                        return;
                    }
                };
                match client
                    .call(
                        CallKind::Mutation,
                        fns::INGEST_CHUNK,
                        value,
                        Some(new_mutation_id()),
                    )
                    .await
                {
                    Ok(reply) => {
                        let seq = reply.value.get_path("sequence").and_then(Value::as_i64);
                        let dup = reply
                            .value
                            .get_path("duplicate")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        match seq {
                            Some(seq) => recorder.write_ok(m, seq, dup, Some(reply.ts), sched_us),
                            None => recorder.write_failed("NO_SEQUENCE"),
                        }
                    }
                    Err(e) => recorder.write_failed(&error_code(&e)),
                }
            })
        })
    }

    fn subscriber_meetings(&self) -> &[usize] {
        &self.subscriber_meetings
    }

    fn proc_watch(&self) -> Option<&ProcWatch> {
        self.proc_watch.as_ref()
    }

    fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.target.http
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use query_engine::obj;

    #[test]
    fn unchanged_chunks_keep_their_sequence_and_new_ones_are_read() {
        let (a, b) = (obj! {"sequence" => 1i64}, obj! {"sequence" => 2i64});
        // The last window's recorded sequence for `a` is deliberately not its field, to show
        // which one is used.
        let last = (vec![a.clone(), b.clone()], vec![Some(7), Some(2)]);
        let equal_copy = obj! {"sequence" => 2i64};
        let now = [a.clone(), equal_copy, obj! {"sequence" => 3i64}];
        assert_eq!(sequences(&now, &last), vec![Some(7), Some(2), Some(3)]);
        // The same object at another position is read again.
        assert_eq!(sequences(&[b, a], &last), vec![Some(2), Some(1)]);
        assert_eq!(sequences(&[obj! {"text" => "x"}], &last), vec![None]);
    }
}
