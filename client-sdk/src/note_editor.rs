//! Client half of collaborative note editing: the ot.js client state machine (Synchronized,
//! AwaitingConfirm, AwaitingWithBuffer) over `linkedup_schema::ot`. Transport-agnostic: the
//! caller feeds it local edits and server messages and sends what it returns.
//!
//! Server contract this is built for: the server receives `(base_version, op)`, transforms `op`
//! past every op committed after `base_version` in sequence order with
//! `transform(committed, op).1`, applies it, bumps the version by one and answers the author
//! with an ack carrying the new version; every other client gets the committed op, in order.
//! The client mirrors that tie-break: a remote op was committed before our in-flight op, so
//! the client calls `transform(remote, outstanding)` and the remote insert stays left.

use linkedup_schema::ot::{OtError, TextOperation};

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

#[derive(Clone, Debug)]
enum State {
    Synchronized,
    /// One op sent, not yet acknowledged; kept transformed to the current version.
    AwaitingConfirm {
        outstanding: TextOperation,
        outstanding_seq: u64,
    },
    /// As above, plus local edits made since, composed into one op sent after the ack.
    AwaitingWithBuffer {
        outstanding: TextOperation,
        outstanding_seq: u64,
        buffer: TextOperation,
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
}

impl NoteEditor {
    /// An editor holding the server's `text` at `version`, with no local edits.
    pub fn new(text: String, version: u64) -> Self {
        Self {
            text,
            version,
            state: State::Synchronized,
            next_client_seq: 1,
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
            State::AwaitingConfirm {
                outstanding,
                outstanding_seq,
            }
            | State::AwaitingWithBuffer {
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
    pub fn apply_local(&mut self, op: TextOperation) -> Result<Option<OutgoingOp>, OtError> {
        let text = op.apply(&self.text)?;
        if op.is_noop() {
            return Ok(None);
        }
        let (state, outgoing) = match std::mem::replace(&mut self.state, State::Synchronized) {
            State::Synchronized => {
                let outgoing = self.outgoing(op.clone());
                let state = State::AwaitingConfirm {
                    outstanding: op,
                    outstanding_seq: outgoing.client_seq,
                };
                (state, Some(outgoing))
            }
            State::AwaitingConfirm {
                outstanding,
                outstanding_seq,
            } => (
                State::AwaitingWithBuffer {
                    outstanding,
                    outstanding_seq,
                    buffer: op,
                },
                None,
            ),
            State::AwaitingWithBuffer {
                outstanding,
                outstanding_seq,
                buffer,
            } => match buffer.compose(&op) {
                Ok(buffer) => (
                    State::AwaitingWithBuffer {
                        outstanding,
                        outstanding_seq,
                        buffer,
                    },
                    None,
                ),
                Err(e) => {
                    // Unreachable while the invariant holds (buffer ends at `text`); keep state.
                    self.state = State::AwaitingWithBuffer {
                        outstanding,
                        outstanding_seq,
                        buffer,
                    };
                    return Err(e);
                }
            },
        };
        self.text = text;
        self.state = state;
        Ok(outgoing)
    }

    /// The server committed our in-flight op as `new_version`. Returns the buffered edits to
    /// send next, if any.
    pub fn server_ack(&mut self, new_version: u64) -> Result<Option<OutgoingOp>, EditorError> {
        self.check_next_version(new_version)?;
        let (state, outgoing) = match std::mem::replace(&mut self.state, State::Synchronized) {
            State::Synchronized => return Err(EditorError::UnexpectedAck),
            State::AwaitingConfirm { .. } => (State::Synchronized, None),
            State::AwaitingWithBuffer { buffer, .. } => {
                self.version = new_version;
                let outgoing = self.outgoing(buffer.clone());
                let state = State::AwaitingConfirm {
                    outstanding: buffer,
                    outstanding_seq: outgoing.client_seq,
                };
                (state, Some(outgoing))
            }
        };
        self.version = new_version;
        self.state = state;
        Ok(outgoing)
    }

    /// Another client's op, committed by the server as `new_version`. On error nothing changes.
    pub fn apply_remote(&mut self, op: TextOperation, new_version: u64) -> Result<(), EditorError> {
        self.check_next_version(new_version)?;
        // Compute everything before mutating so a bad op leaves the editor intact.
        let (remote, state) = match &self.state {
            State::Synchronized => (op, State::Synchronized),
            State::AwaitingConfirm {
                outstanding,
                outstanding_seq,
            } => {
                let (remote, outstanding) = TextOperation::transform(&op, outstanding)?;
                let state = State::AwaitingConfirm {
                    outstanding,
                    outstanding_seq: *outstanding_seq,
                };
                (remote, state)
            }
            State::AwaitingWithBuffer {
                outstanding,
                outstanding_seq,
                buffer,
            } => {
                let (remote, outstanding) = TextOperation::transform(&op, outstanding)?;
                let (remote, buffer) = TextOperation::transform(&remote, buffer)?;
                let state = State::AwaitingWithBuffer {
                    outstanding,
                    outstanding_seq: *outstanding_seq,
                    buffer,
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
    /// on a version older than the window is answered with a resync.
    struct SimServer {
        text: String,
        history: Vec<TextOperation>,
        window: Option<usize>,
    }

    impl SimServer {
        fn version(&self) -> u64 {
            self.history.len() as u64
        }

        /// Returns the message for the author and, if committed, the op for everyone else.
        fn receive(&mut self, msg: OutgoingOp) -> (ToClient, Option<TextOperation>) {
            let base = msg.base_version as usize;
            assert!(base <= self.history.len(), "client ahead of server");
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

    /// Random edits and deliveries, then drain every queue; returns the number of commits.
    fn simulate(seed: u64, n_clients: usize, steps: usize, window: Option<usize>) -> u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let initial = random_text(&mut rng, 12);
        let mut server = SimServer {
            text: initial.clone(),
            history: Vec::new(),
            window,
        };
        let mut clients: Vec<SimClient> = (0..n_clients)
            .map(|_| SimClient {
                editor: NoteEditor::new(initial.clone(), 0),
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
                    if let Some(out) = editor.apply_local(op).unwrap() {
                        clients[i].to_server.push_back(out);
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
            simulate(seed, n_clients, steps, None);
        }

        #[test]
        fn note_editors_converge_with_resyncs(
            seed in any::<u64>(),
            n_clients in 3usize..=5,
            steps in 10usize..200,
            window in 0usize..4,
        ) {
            simulate(seed, n_clients, steps, Some(window));
        }
    }

    #[test]
    fn note_editor_simulation_commits_ops() {
        let commits: u64 = (0..20).map(|seed| simulate(seed, 4, 150, None)).sum();
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
