//! Client half of collaborative note editing: the ot.js client state machine (Synchronized,
//! AwaitingConfirm, AwaitingWithBuffer) over `linkedup_schema::ot`, within the server's limits
//! on edits. Transport-agnostic: the caller feeds it local edits and server messages and sends
//! what it returns.
//!
//! Server contract this is built for: the server receives `(base_version, op)`, transforms `op`
//! past every op committed after `base_version` in sequence order with
//! `transform(committed, op).1`, applies it, bumps the version by one and answers the author
//! with an ack carrying the new version; every other client gets the committed op, in order.
//! The client mirrors that tie-break: a remote op was committed before our in-flight op, so
//! the client calls `transform(remote, outstanding)` and the remote insert stays left.
//!
//! The server refuses an op over its per-op limits (`OpLimits::DEFAULT`) and one that would
//! take the note past `MAX_NOTE_CHARS`, and such a refusal could only be met by reloading the
//! note, dropping the edits not yet confirmed. So an edit that alone breaks those limits is
//! refused here, and the edits made while an op awaits its ack are buffered not in one op, as
//! in ot.js, but in a bounded queue of ops each within the per-op limits, sent one after
//! another.

use std::collections::VecDeque;

use linkedup_schema::api::notes::MAX_NOTE_CHARS;
use linkedup_schema::ot::{OpLimits, OtError, TextOperation};

/// Most ops of local edits an editor holds behind the one in flight. Each is within the
/// server's per-op limits (edits compose into the last one while it stays within them), so
/// this bounds the memory of edits awaiting the server; past it `apply_local` refuses edits
/// until the server confirms some.
pub const MAX_BUFFERED_OPS: usize = 16;

/// An operation to send to the server now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingOp {
    /// The server version the op applies to.
    pub base_version: u64,
    pub op: TextOperation,
    /// Increases by one per op this editor sends, so a server can spot a retransmission.
    pub client_seq: u64,
}

/// A server message the editor cannot accept; the caller should [`NoteEditor::resync`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditorError {
    /// The server's op does not fit the local document.
    #[error(transparent)]
    Ot(#[from] OtError),
    /// Server messages must arrive in order, each moving the version by one.
    #[error("server message carries version {got} but the editor expected {expected}; resync")]
    VersionGap { expected: u64, got: u64 },
    /// An ack arrived while no op was in flight.
    #[error("server acknowledged an operation but none is in flight; resync")]
    UnexpectedAck,
}

/// Why [`NoteEditor::apply_local`] refused an edit; nothing changed, the text included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditRefused {
    /// The edit does not fit the text, or alone breaks a per-op limit of the server
    /// (`OtError::TooManyComponents`, `OtError::InsertTooLong`): make it in smaller edits.
    #[error(transparent)]
    Ot(#[from] OtError),
    /// The note would have more chars than the server keeps.
    #[error("the note would have {chars} chars, the limit is {max}")]
    NoteTooLong { chars: u64, max: u64 },
    /// `MAX_BUFFERED_OPS` ops of edits already wait behind the one in flight.
    #[error("{max} operations of edits already wait for the server; edit again once it has confirmed some")]
    TooManyPending { max: usize },
}

/// What an editor keeps its edits within.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Per op, as the server checks every op it receives.
    op: OpLimits,
    /// Chars of the note.
    note_chars: u64,
    /// Ops buffered behind the one in flight.
    buffered_ops: usize,
}

impl Limits {
    /// The server's (`notes.applyOperation`), and `MAX_BUFFERED_OPS`.
    const SERVER: Limits = Limits {
        op: OpLimits::DEFAULT,
        note_chars: MAX_NOTE_CHARS,
        buffered_ops: MAX_BUFFERED_OPS,
    };
}

#[derive(Clone, Debug)]
enum State {
    Synchronized,
    /// One op sent, not yet acknowledged, kept transformed to the current version; and the
    /// local edits made since, to send one after another once it is, each op applying after
    /// the one before it (ot.js's AwaitingConfirm with an empty `buffer`, AwaitingWithBuffer
    /// otherwise, its one buffer cut into ops within the per-op limits).
    Awaiting {
        outstanding: TextOperation,
        outstanding_seq: u64,
        buffer: VecDeque<TextOperation>,
    },
}

/// The local copy of one note and the edits the server has not confirmed yet.
#[derive(Clone, Debug)]
pub struct NoteEditor {
    /// Local text: the server's text at `version` plus our unconfirmed edits.
    text: String,
    /// The last server version reflected in `text`.
    version: u64,
    state: State,
    next_client_seq: u64,
    limits: Limits,
}

impl NoteEditor {
    /// An editor holding the server's `text` at `version`, with no local edits.
    pub fn new(text: String, version: u64) -> Self {
        Self {
            text,
            version,
            state: State::Synchronized,
            next_client_seq: 1,
            limits: Limits::SERVER,
        }
    }

    /// The text the user sees, including unconfirmed local edits.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The last server version reflected in [`text`](Self::text).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True when local edits await confirmation or sending.
    pub fn has_pending(&self) -> bool {
        !matches!(self.state, State::Synchronized)
    }

    /// The op in flight rebased to the current version, for retransmission after a reconnect.
    /// It keeps its `client_seq`: the server must drop it if that seq was already committed.
    pub fn in_flight(&self) -> Option<OutgoingOp> {
        match &self.state {
            State::Synchronized => None,
            State::Awaiting {
                outstanding,
                outstanding_seq,
                ..
            } => Some(OutgoingOp {
                base_version: self.version,
                op: outstanding.clone(),
                client_seq: *outstanding_seq,
            }),
        }
    }

    /// Applies a local edit (built against [`text`](Self::text)). Returns the op to send now,
    /// or `None` if an op is already in flight (the edit waits in the buffer) or it is a no-op.
    /// Refused, changing nothing: an edit that does not fit the text or alone breaks the
    /// server's per-op limits (`OpLimits::DEFAULT`), one that would lengthen the note past
    /// `MAX_NOTE_CHARS`, and one that needs an op of its own in the buffer when
    /// `MAX_BUFFERED_OPS` already wait there.
    pub fn apply_local(&mut self, op: TextOperation) -> Result<Option<OutgoingOp>, EditRefused> {
        op.check_limits(&self.limits.op)?;
        let text = op.apply(&self.text)?;
        if op.is_noop() {
            return Ok(None);
        }
        let chars = op.target_len();
        if chars > self.limits.note_chars && chars > op.base_len() {
            return Err(EditRefused::NoteTooLong {
                chars,
                max: self.limits.note_chars,
            });
        }
        let outgoing = if let State::Awaiting { buffer, .. } = &mut self.state {
            buffer_edit(buffer, op, &self.limits)?;
            None
        } else {
            let outgoing = self.outgoing(op);
            self.state = State::Awaiting {
                outstanding: outgoing.op.clone(),
                outstanding_seq: outgoing.client_seq,
                buffer: VecDeque::new(),
            };
            Some(outgoing)
        };
        self.text = text;
        Ok(outgoing)
    }

    /// The server committed our in-flight op as `new_version`. Returns the buffered edits to
    /// send next, if any.
    pub fn server_ack(&mut self, new_version: u64) -> Result<Option<OutgoingOp>, EditorError> {
        self.check_next_version(new_version)?;
        let State::Awaiting { buffer, .. } = &mut self.state else {
            return Err(EditorError::UnexpectedAck);
        };
        let next = take_next(buffer, &self.limits.op)?;
        let buffer = std::mem::take(buffer);
        self.version = new_version;
        let Some(op) = next else {
            self.state = State::Synchronized;
            return Ok(None);
        };
        let outgoing = self.outgoing(op);
        self.state = State::Awaiting {
            outstanding: outgoing.op.clone(),
            outstanding_seq: outgoing.client_seq,
            buffer,
        };
        Ok(Some(outgoing))
    }

    /// Another client's op, committed by the server as `new_version`. On error nothing changes.
    pub fn apply_remote(&mut self, op: TextOperation, new_version: u64) -> Result<(), EditorError> {
        self.check_next_version(new_version)?;
        // Compute everything before mutating so a bad op leaves the editor intact.
        let (remote, state) = match &self.state {
            State::Synchronized => (op, State::Synchronized),
            State::Awaiting {
                outstanding,
                outstanding_seq,
                buffer,
            } => {
                let (mut remote, outstanding) = TextOperation::transform(&op, outstanding)?;
                // Past each buffered op in turn, as each applies after the one before.
                let mut transformed = VecDeque::with_capacity(buffer.len());
                for buffered in buffer {
                    let (past, buffered) = TextOperation::transform(&remote, buffered)?;
                    remote = past;
                    transformed.push_back(buffered);
                }
                let state = State::Awaiting {
                    outstanding,
                    outstanding_seq: *outstanding_seq,
                    buffer: transformed,
                };
                (remote, state)
            }
        };
        self.text = remote.apply(&self.text)?;
        self.state = state;
        self.version = new_version;
        Ok(())
    }

    /// Replaces the local copy with the server's `text` at `version`, e.g. after the server
    /// rejected our base version as too old. Unconfirmed local edits are discarded, not rebased
    /// (the ops between our base and `version` are unknown here); returns whether any were, so
    /// the UI can tell the user.
    pub fn resync(&mut self, text: String, version: u64) -> bool {
        let discarded = self.has_pending();
        self.text = text;
        self.version = version;
        self.state = State::Synchronized;
        discarded
    }

    fn outgoing(&mut self, op: TextOperation) -> OutgoingOp {
        let client_seq = self.next_client_seq;
        self.next_client_seq += 1;
        OutgoingOp {
            base_version: self.version,
            op,
            client_seq,
        }
    }

    fn check_next_version(&self, new_version: u64) -> Result<(), EditorError> {
        let expected = self.version.saturating_add(1);
        if new_version == expected {
            Ok(())
        } else {
            Err(EditorError::VersionGap {
                expected,
                got: new_version,
            })
        }
    }
}

/// Buffers a local edit behind the op in flight: composed into the last buffered op while that
/// stays within the per-op limits, else as an op of its own, if fewer than
/// `limits.buffered_ops` wait. On error `buffer` is as it was.
fn buffer_edit(
    buffer: &mut VecDeque<TextOperation>,
    op: TextOperation,
    limits: &Limits,
) -> Result<(), EditRefused> {
    if let Some(last) = buffer.back_mut() {
        let composed = last.compose(&op)?;
        if composed.check_limits(&limits.op).is_ok() {
            *last = composed;
            return Ok(());
        }
    }
    if buffer.len() >= limits.buffered_ops {
        return Err(EditRefused::TooManyPending {
            max: limits.buffered_ops,
        });
    }
    buffer.push_back(op);
    Ok(())
}

/// Takes the next op to send off the front of `buffer`: the first buffered op, or, when
/// transforms past remote ops grew it over the per-op component limit, its first components
/// (the rest stays first in line; transforms add no inserted text). On error `buffer` is as it
/// was.
fn take_next(
    buffer: &mut VecDeque<TextOperation>,
    limits: &OpLimits,
) -> Result<Option<TextOperation>, OtError> {
    let Some(first) = buffer.front_mut() else {
        return Ok(None);
    };
    if first.components().len() <= limits.max_components {
        return Ok(buffer.pop_front());
    }
    // One component less: `split_at` adds a retain of the rest.
    let (head, rest) = first.split_at(limits.max_components.saturating_sub(1))?;
    *first = rest;
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;

    const ALPHABET: &[char] = &['a', 'b', ' ', '👍', '\u{1F3FD}', 'e', '\u{301}', '会', '𠀋'];

    fn random_text(rng: &mut StdRng, max_chars: usize) -> String {
        let n = rng.gen_range(0..=max_chars);
        (0..n)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect()
    }

    /// A random edit of a few components against a document of `len` chars.
    fn random_op(rng: &mut StdRng, len: u64) -> TextOperation {
        let mut left = len;
        let mut op = TextOperation::new();
        for _ in 0..rng.gen_range(1..4) {
            let n = rng.gen_range(0..=left.min(5));
            left -= n;
            op = match rng.gen_range(0..3) {
                0 => op.retain(n),
                1 => op.delete(n),
                _ => op.retain(n).insert(&random_text(rng, 3)),
            };
        }
        op.retain(left)
    }

    enum ToClient {
        Ack(u64),
        Remote(TextOperation, u64),
        Resync(String, u64),
    }

    /// The server contract from the module docs, with an optional history window: an op based
    /// on a version older than the window is answered with a resync. Every op it receives must
    /// be within `limits`, as the real server's are.
    struct SimServer {
        text: String,
        history: Vec<TextOperation>,
        window: Option<usize>,
        limits: OpLimits,
    }

    impl SimServer {
        fn version(&self) -> u64 {
            self.history.len() as u64
        }

        /// Returns the message for the author and, if committed, the op for everyone else.
        fn receive(&mut self, msg: OutgoingOp) -> (ToClient, Option<TextOperation>) {
            let base = msg.base_version as usize;
            assert!(base <= self.history.len(), "client ahead of server");
            if let Err(e) = msg.op.check_limits(&self.limits) {
                panic!("the server refuses {:?}: {e}", msg.op);
            }
            if self.window.is_some_and(|w| self.history.len() - base > w) {
                return (ToClient::Resync(self.text.clone(), self.version()), None);
            }
            let mut op = msg.op;
            for committed in &self.history[base..] {
                op = TextOperation::transform(committed, &op).unwrap().1;
            }
            self.text = op.apply(&self.text).unwrap();
            self.history.push(op.clone());
            (ToClient::Ack(self.version()), Some(op))
        }
    }

    struct SimClient {
        editor: NoteEditor,
        to_server: VecDeque<OutgoingOp>,
        from_server: VecDeque<ToClient>,
    }

    fn deliver_to_server(server: &mut SimServer, clients: &mut [SimClient], i: usize) {
        let Some(msg) = clients[i].to_server.pop_front() else {
            return;
        };
        let (reply, committed) = server.receive(msg);
        clients[i].from_server.push_back(reply);
        if let Some(op) = committed {
            for (j, c) in clients.iter_mut().enumerate() {
                if j != i {
                    c.from_server
                        .push_back(ToClient::Remote(op.clone(), server.version()));
                }
            }
        }
    }

    fn deliver_to_client(client: &mut SimClient) {
        let Some(msg) = client.from_server.pop_front() else {
            return;
        };
        match msg {
            ToClient::Ack(v) => {
                if let Some(out) = client.editor.server_ack(v).unwrap() {
                    client.to_server.push_back(out);
                }
            }
            ToClient::Remote(op, v) => client.editor.apply_remote(op, v).unwrap(),
            ToClient::Resync(text, v) => {
                client.editor.resync(text, v);
            }
        }
    }

    /// An editor within `limits` rather than the server's.
    fn limited(text: &str, version: u64, limits: Limits) -> NoteEditor {
        NoteEditor {
            limits,
            ..NoteEditor::new(text.into(), version)
        }
    }

    /// Limits small enough that random edits meet every one of them: edits refused, buffers
    /// cut into several ops, and buffered ops grown past the component limit by transforms.
    const TIGHT: Limits = Limits {
        op: OpLimits {
            max_components: 4,
            max_insert_chars: 6,
        },
        note_chars: 40,
        buffered_ops: 3,
    };

    /// Random edits and deliveries, then drain every queue; returns the number of commits.
    fn simulate(
        seed: u64,
        n_clients: usize,
        steps: usize,
        window: Option<usize>,
        limits: Limits,
    ) -> u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let initial = random_text(&mut rng, 12);
        let mut server = SimServer {
            text: initial.clone(),
            history: Vec::new(),
            window,
            limits: limits.op,
        };
        let mut clients: Vec<SimClient> = (0..n_clients)
            .map(|_| SimClient {
                editor: limited(&initial, 0, limits),
                to_server: VecDeque::new(),
                from_server: VecDeque::new(),
            })
            .collect();
        // Per-client speeds so some clients lag far behind others.
        let speeds: Vec<u32> = (0..n_clients).map(|_| rng.gen_range(1..10)).collect();
        for _ in 0..steps {
            let i = pick_weighted(&mut rng, &speeds);
            match rng.gen_range(0..10) {
                0..=3 => {
                    let editor = &mut clients[i].editor;
                    let op = random_op(&mut rng, editor.text().chars().count() as u64);
                    let before = editor.clone();
                    match editor.apply_local(op) {
                        Ok(Some(out)) => clients[i].to_server.push_back(out),
                        Ok(None) => {}
                        // Refused (only under tight limits): nothing changed.
                        Err(_) => {
                            assert_eq!(editor.text(), before.text());
                            assert_eq!(editor.in_flight(), before.in_flight());
                        }
                    }
                }
                4..=6 => deliver_to_server(&mut server, &mut clients, i),
                _ => deliver_to_client(&mut clients[i]),
            }
        }
        loop {
            let busy: Vec<(usize, bool)> = clients
                .iter()
                .enumerate()
                .flat_map(|(i, c)| {
                    let mut v = Vec::new();
                    if !c.to_server.is_empty() {
                        v.push((i, true));
                    }
                    if !c.from_server.is_empty() {
                        v.push((i, false));
                    }
                    v
                })
                .collect();
            if busy.is_empty() {
                break;
            }
            let (i, to_server) = busy[rng.gen_range(0..busy.len())];
            if to_server {
                deliver_to_server(&mut server, &mut clients, i);
            } else {
                deliver_to_client(&mut clients[i]);
            }
        }
        for c in &clients {
            assert!(!c.editor.has_pending());
            assert_eq!(c.editor.version(), server.version());
            assert_eq!(c.editor.text(), server.text);
        }
        server.version()
    }

    fn pick_weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = rng.gen_range(0..total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// 2,000 cases by default; `PROPTEST_CASES` overrides as for every other proptest.
    fn sim_config() -> ProptestConfig {
        let default = ProptestConfig::default();
        let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            2_000
        };
        ProptestConfig { cases, ..default }
    }

    proptest! {
        #![proptest_config(sim_config())]

        #[test]
        fn note_editors_converge_with_server(
            seed in any::<u64>(),
            n_clients in 3usize..=5,
            steps in 10usize..200,
        ) {
            simulate(seed, n_clients, steps, None, Limits::SERVER);
        }

        #[test]
        fn note_editors_converge_with_resyncs(
            seed in any::<u64>(),
            n_clients in 3usize..=5,
            steps in 10usize..200,
            window in 0usize..4,
        ) {
            simulate(seed, n_clients, steps, Some(window), Limits::SERVER);
        }

        /// Under limits that random edits keep meeting, every op sent is within them and the
        /// editors still converge: buffered edits go out as several ops, one after another.
        #[test]
        fn note_editors_converge_within_tight_limits(
            seed in any::<u64>(),
            n_clients in 3usize..=5,
            steps in 10usize..200,
        ) {
            simulate(seed, n_clients, steps, None, TIGHT);
        }
    }

    #[test]
    fn note_editor_simulation_commits_ops() {
        let commits: u64 = (0..20)
            .map(|seed| simulate(seed, 4, 150, None, Limits::SERVER))
            .sum();
        assert!(commits > 100, "simulation barely exercised the server");
    }

    #[test]
    fn note_editor_concurrent_inserts_committed_first_goes_left() {
        let mut alice = NoteEditor::new("x".into(), 0);
        let mut bob = NoteEditor::new("x".into(), 0);
        let a = alice
            .apply_local(TextOperation::new().retain(1).insert("A"))
            .unwrap()
            .unwrap();
        let b = bob
            .apply_local(TextOperation::new().retain(1).insert("B"))
            .unwrap()
            .unwrap();
        let mut server = SimServer {
            text: "x".into(),
            history: Vec::new(),
            window: None,
            limits: OpLimits::DEFAULT,
        };
        let (_, a_committed) = server.receive(a);
        let (_, b_committed) = server.receive(b);
        assert_eq!(server.text, "xAB");
        assert_eq!(alice.server_ack(1).unwrap(), None);
        alice.apply_remote(b_committed.unwrap(), 2).unwrap();
        bob.apply_remote(a_committed.unwrap(), 1).unwrap();
        assert_eq!(bob.server_ack(2).unwrap(), None);
        assert_eq!((alice.text(), bob.text()), ("xAB", "xAB"));
    }

    #[test]
    fn note_editor_buffers_while_awaiting() {
        let mut ed = NoteEditor::new("ab".into(), 7);
        let first = ed
            .apply_local(TextOperation::new().insert("1").retain(2))
            .unwrap()
            .unwrap();
        assert_eq!((first.base_version, first.client_seq), (7, 1));
        assert_eq!(
            ed.apply_local(TextOperation::new().retain(3).insert("2"))
                .unwrap(),
            None
        );
        assert_eq!(
            ed.apply_local(TextOperation::new().retain(4).insert("3"))
                .unwrap(),
            None
        );
        assert_eq!(ed.text(), "1ab23");
        let next = ed.server_ack(8).unwrap().unwrap();
        assert_eq!((next.base_version, next.client_seq), (8, 2));
        assert_eq!(next.op, TextOperation::new().retain(3).insert("23"));
        assert_eq!(ed.server_ack(9).unwrap(), None);
        assert!(!ed.has_pending());
    }

    /// Sends what `editor` has to send to `server`, acknowledging each, until it has nothing
    /// left; returns the ops sent. `first` is the op already returned by `apply_local`.
    fn drain(
        editor: &mut NoteEditor,
        server: &mut SimServer,
        first: OutgoingOp,
    ) -> Vec<TextOperation> {
        let mut sent = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next {
            sent.push(out.op.clone());
            let (ToClient::Ack(v), _) = server.receive(out) else {
                panic!("the server did not commit the op");
            };
            next = editor.server_ack(v).unwrap();
        }
        assert!(!editor.has_pending());
        assert_eq!(editor.text(), server.text);
        sent
    }

    /// An edit the server would refuse — over the per-op limits, or lengthening the note past
    /// its maximum — is refused with the editor unchanged; shortening an over-long note is not.
    #[test]
    fn edits_the_server_would_refuse_are_refused_and_change_nothing() {
        let text = "x".repeat(2_000);
        let mut ed = NoteEditor::new(text.clone(), 3);
        // A "replace all" by a character-wise diff: 3,000 components.
        let mut replace_all = TextOperation::new();
        for i in 0..2_000 {
            replace_all = if i % 2 == 0 {
                replace_all.retain(1)
            } else {
                replace_all.delete(1).insert("y")
            };
        }
        assert!(matches!(
            ed.apply_local(replace_all),
            Err(EditRefused::Ot(OtError::TooManyComponents { .. }))
        ));
        let paste = "p".repeat(OpLimits::DEFAULT.max_insert_chars as usize + 1);
        assert!(matches!(
            ed.apply_local(TextOperation::new().insert(&paste).retain(2_000)),
            Err(EditRefused::Ot(OtError::InsertTooLong { .. }))
        ));
        assert_eq!(
            (ed.text(), ed.version(), ed.has_pending()),
            (text.as_str(), 3, false)
        );

        let room = 5;
        let near_full = "n".repeat((MAX_NOTE_CHARS - room) as usize);
        let mut ed = NoteEditor::new(near_full.clone(), 1);
        let end = MAX_NOTE_CHARS - room;
        assert_eq!(
            ed.apply_local(
                TextOperation::new()
                    .retain(end)
                    .insert(&"+".repeat(room as usize + 1))
            ),
            Err(EditRefused::NoteTooLong {
                chars: MAX_NOTE_CHARS + 1,
                max: MAX_NOTE_CHARS
            })
        );
        assert_eq!((ed.text(), ed.has_pending()), (near_full.as_str(), false));
        assert!(ed
            .apply_local(
                TextOperation::new()
                    .retain(end)
                    .insert(&"+".repeat(room as usize))
            )
            .unwrap()
            .is_some());

        let mut over_long = NoteEditor::new("o".repeat(MAX_NOTE_CHARS as usize + 10), 1);
        assert!(over_long
            .apply_local(TextOperation::new().delete(1).retain(MAX_NOTE_CHARS + 9))
            .is_ok());
    }

    /// 501 edits at different places while the first is in flight compose into more than one
    /// op's worth of components: they go out as several ops, each within the limits (the
    /// simulated server checks), and all of them land.
    #[test]
    fn edits_beyond_one_ops_limits_are_buffered_as_several_ops() {
        const EDITS: u64 = 501;
        let text = "x".repeat(2_000);
        let mut server = SimServer {
            text: text.clone(),
            history: Vec::new(),
            window: None,
            limits: OpLimits::DEFAULT,
        };
        let mut ed = NoteEditor::new(text, 0);
        // Each replaces the char at 3i: three components (retain, insert, delete) apiece.
        let replace_at = |at: u64| {
            TextOperation::new()
                .retain(at)
                .delete(1)
                .insert("a")
                .retain(2_000 - at - 1)
        };
        let first = ed.apply_local(replace_at(0)).unwrap().unwrap();
        for i in 1..EDITS {
            assert_eq!(ed.apply_local(replace_at(3 * i)).unwrap(), None);
        }
        let sent = drain(&mut ed, &mut server, first);
        assert!(
            sent.len() >= 3,
            "{} ops: the buffered edits fitted in one",
            sent.len()
        );
        let want: String = (0..2_000)
            .map(|i| {
                if i % 3 == 0 && i / 3 < EDITS {
                    'a'
                } else {
                    'x'
                }
            })
            .collect();
        assert_eq!(server.text, want);
    }

    /// Past `buffered_ops` ops waiting, an edit that does not compose into the last one is
    /// refused with the editor unchanged; once the server confirms, edits are taken again.
    #[test]
    fn buffered_ops_are_bounded() {
        let limits = Limits {
            op: OpLimits {
                max_components: 3,
                max_insert_chars: 100,
            },
            note_chars: 100,
            buffered_ops: 2,
        };
        let mut ed = limited("abcdefgh", 0, limits);
        let insert_at =
            |at: u64, len: u64| TextOperation::new().retain(at).insert("-").retain(len - at);
        let first = ed.apply_local(insert_at(0, 8)).unwrap().unwrap();
        // Each at another place: none composes into the op before it within 3 components.
        assert_eq!(ed.apply_local(insert_at(3, 9)).unwrap(), None);
        assert_eq!(ed.apply_local(insert_at(7, 10)).unwrap(), None);
        let before = ed.text().to_string();
        assert_eq!(
            ed.apply_local(insert_at(11, 11)),
            Err(EditRefused::TooManyPending { max: 2 })
        );
        assert_eq!(ed.text(), before);
        let mut server = SimServer {
            text: "abcdefgh".into(),
            history: Vec::new(),
            window: None,
            limits: limits.op,
        };
        assert_eq!(drain(&mut ed, &mut server, first).len(), 3);
        assert!(ed.apply_local(insert_at(11, 11)).unwrap().is_some());
    }

    /// A buffered op that transforms past remote ops grew over the component limit is sent in
    /// pieces within it, one after another.
    #[test]
    fn a_buffered_op_grown_past_the_limit_is_sent_in_pieces() {
        let limits = Limits {
            op: OpLimits {
                max_components: 4,
                max_insert_chars: 100,
            },
            ..Limits::SERVER
        };
        let mut server = SimServer {
            text: "abcdefgh".into(),
            history: Vec::new(),
            window: None,
            limits: limits.op,
        };
        let mut ed = limited("abcdefgh", 0, limits);
        let first = ed
            .apply_local(TextOperation::new().retain(8).insert("!"))
            .unwrap()
            .unwrap();
        // Buffered: delete "bcdefg" (3 components).
        assert_eq!(
            ed.apply_local(TextOperation::new().retain(1).delete(6).retain(2))
                .unwrap(),
            None
        );
        // Another editor's inserts inside that range, committed first, cut the delete in
        // three: 7 components.
        let remote = [
            TextOperation::new().retain(3).insert("X").retain(5),
            TextOperation::new().retain(6).insert("Y").retain(3),
        ];
        for (version, op) in (1..).zip(remote) {
            let (_, committed) = server.receive(OutgoingOp {
                base_version: version - 1,
                op,
                client_seq: version,
            });
            ed.apply_remote(committed.unwrap(), version).unwrap();
        }
        let sent = drain(&mut ed, &mut server, first);
        assert!(sent.len() >= 3, "{sent:?}");
        assert_eq!(server.text, "aXYh!");
    }

    #[test]
    fn note_editor_rejects_out_of_order_messages() {
        let mut ed = NoteEditor::new("ab".into(), 3);
        assert_eq!(ed.server_ack(4), Err(EditorError::UnexpectedAck));
        assert_eq!(
            ed.apply_remote(TextOperation::new().retain(2), 5),
            Err(EditorError::VersionGap {
                expected: 4,
                got: 5
            })
        );
        assert!(matches!(
            ed.apply_remote(TextOperation::new().retain(9), 4),
            Err(EditorError::Ot(_))
        ));
        assert_eq!((ed.text(), ed.version()), ("ab", 3));
        assert!(ed
            .apply_local(TextOperation::new().retain(2).insert("c"))
            .unwrap()
            .is_some());
        assert!(ed.resync("zz".into(), 10));
        assert_eq!(
            (ed.text(), ed.version(), ed.has_pending()),
            ("zz", 10, false)
        );
    }
}
