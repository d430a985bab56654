//! The PostgreSQL peer: the same workload on a throwaway cluster (durable commits). Chunks
//! go into a table whose per-meeting sequence comes from a counter row updated in the same
//! statement; an AFTER INSERT trigger calls `pg_notify('m' || meeting_id, payload)`. Listener
//! connections each `LISTEN` to a slice of the meetings and hand every notification to that
//! meeting's S simulated subscribers (in-process trackers), like the LinkedUp subscribers.

use std::sync::Arc;

use anyhow::Context;
use tokio_postgres::Statement;

use super::checker::SequenceTracker;
use super::driver::{parse_sched_us, WriteFn};
use super::procstat::ProcWatch;
use super::recorder::{now_us, Recorder};
use super::FanoutSystem;
use crate::pg::PgCluster;
use crate::pg_listen::{connect_listener, data_dir};

const SCHEMA: &str = "
CREATE TABLE fanout_meetings (id int PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0);
CREATE TABLE fanout_transcripts (
    meeting_id int NOT NULL REFERENCES fanout_meetings (id),
    sequence bigint NOT NULL,
    chunk_id text NOT NULL,
    text text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meeting_id, sequence),
    UNIQUE (meeting_id, chunk_id)
);
CREATE FUNCTION fanout_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('m' || NEW.meeting_id,
        NEW.sequence || ' ' || floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint
        || ' ' || NEW.text);
    RETURN NEW;
END $$;
CREATE TRIGGER fanout_notify AFTER INSERT ON fanout_transcripts
    FOR EACH ROW EXECUTE FUNCTION fanout_notify();
";

/// One chunk: next sequence of the meeting and the insert, in one statement (one durable
/// transaction).
const INSERT: &str = "
WITH s AS (UPDATE fanout_meetings SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq)
INSERT INTO fanout_transcripts (meeting_id, sequence, chunk_id, text)
SELECT $1, last_seq, $2, $3 FROM s RETURNING sequence";

#[derive(Clone, Debug)]
pub struct PgPlan {
    pub meetings: usize,
    pub subscribers: usize,
    /// Connections used by the writers.
    pub writer_connections: usize,
    /// Connections listening; each LISTENs to `meetings / listeners` channels.
    pub listener_connections: usize,
    pub max_seq: usize,
}

pub struct PgFleet {
    name: String,
    writers: Arc<Vec<(tokio_postgres::Client, Statement)>>,
    _listeners: Vec<tokio_postgres::Client>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    subscriber_meetings: Vec<usize>,
    recorder: Arc<Recorder>,
    proc_watch: Option<ProcWatch>,
}

/// `seq commit_us text` → (seq, commit µs, scheduled send µs).
fn parse_payload(p: &str) -> Option<(i64, u64, u64)> {
    let mut it = p.splitn(3, ' ');
    let seq = it.next()?.parse().ok()?;
    let commit = it.next()?.parse().ok()?;
    let sched = parse_sched_us(it.next()?)?;
    Some((seq, commit, sched))
}

impl PgFleet {
    pub async fn setup(cluster: &PgCluster, plan: PgPlan) -> anyhow::Result<Self> {
        let admin = cluster.connect().await?;
        admin
            .batch_execute(
                "DROP TABLE IF EXISTS fanout_transcripts; DROP TABLE IF EXISTS fanout_meetings; \
                 DROP FUNCTION IF EXISTS fanout_notify();",
            )
            .await
            .context("dropping old tables")?;
        admin
            .batch_execute(SCHEMA)
            .await
            .context("creating the schema")?;
        admin
            .execute(
                "INSERT INTO fanout_meetings (id) SELECT generate_series(0, $1 - 1)",
                &[&(plan.meetings as i32)],
            )
            .await
            .context("creating meetings")?;
        let recorder = Arc::new(Recorder::new(
            plan.meetings,
            plan.meetings * plan.subscribers,
            plan.max_seq,
        ));
        let listeners_n = plan.listener_connections.clamp(1, plan.meetings.max(1));
        let mut listeners = Vec::new();
        let mut tasks = Vec::new();
        for l in 0..listeners_n {
            let mine: Vec<usize> = (l..plan.meetings).step_by(listeners_n).collect();
            let s_count = plan.subscribers;
            // Trackers for this listener's meetings, indexed by meeting / listeners_n.
            let mut trackers: Vec<Vec<SequenceTracker>> =
                vec![vec![SequenceTracker::default(); s_count]; mine.len()];
            let rec = recorder.clone();
            let (client, task) = connect_listener(cluster, move |n| {
                let recv_us = now_us();
                let Some(m) = n
                    .channel()
                    .strip_prefix('m')
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    return;
                };
                let Some(subs) = trackers.get_mut(m / listeners_n) else {
                    return;
                };
                let Some((seq, commit_us, sched_us)) = parse_payload(n.payload()) else {
                    rec.write_failed("BAD_PAYLOAD");
                    return;
                };
                for (s, t) in subs.iter_mut().enumerate() {
                    let before = t.anomalies();
                    let j = m * s_count + s;
                    if t.observe(seq) {
                        rec.delivered(j, m, seq, sched_us, Some(commit_us), recv_us);
                    }
                    rec.add_anomalies(super::anomalies_minus(t.anomalies(), before));
                    rec.set_progress(j, t.last_seq());
                }
            })
            .await?;
            let listen: String = mine.iter().map(|m| format!("LISTEN m{m};")).collect();
            client.batch_execute(&listen).await.context("LISTEN")?;
            listeners.push(client);
            tasks.push(task);
        }
        let mut writers = Vec::new();
        for _ in 0..plan.writer_connections.max(1) {
            let c = cluster.connect().await?;
            let st = c.prepare(INSERT).await.context("preparing the insert")?;
            writers.push((c, st));
        }
        let subscriber_meetings = (0..plan.meetings)
            .flat_map(|m| std::iter::repeat_n(m, plan.subscribers))
            .collect();
        Ok(PgFleet {
            name: "PostgreSQL LISTEN/NOTIFY".into(),
            writers: Arc::new(writers),
            _listeners: listeners,
            tasks,
            subscriber_meetings,
            recorder,
            proc_watch: ProcWatch::postmaster(&data_dir(cluster)),
        })
    }

    pub async fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

impl FanoutSystem for PgFleet {
    fn name(&self) -> &str {
        &self.name
    }

    fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    fn writer(&self) -> WriteFn {
        let writers = self.writers.clone();
        let recorder = self.recorder.clone();
        let producers_hint = writers.len();
        Arc::new(move |m, p, sched_us, text| {
            let writers = writers.clone();
            let recorder = recorder.clone();
            Box::pin(async move {
                let (client, st) = &writers[(m + p * 7919) % producers_hint];
                let chunk_id: String = text
                    .split(' ')
                    .skip(1)
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("-");
                match client.query_one(st, &[&(m as i32), &chunk_id, &text]).await {
                    Ok(row) => match row.try_get::<_, i64>(0) {
                        Ok(seq) => recorder.write_ok(m, seq, false, None, sched_us),
                        Err(_) => recorder.write_failed("PG_DECODE"),
                    },
                    Err(e) => {
                        let code = e
                            .code()
                            .map(|c| format!("PG_{}", c.code()))
                            .unwrap_or_else(|| "PG".into());
                        recorder.write_failed(&code);
                    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload("7 1795000000000100 1795000000000000 m1 p0 w3 xx"),
            Some((7, 1_795_000_000_000_100, 1_795_000_000_000_000))
        );
        assert_eq!(parse_payload("x"), None);
    }
}
