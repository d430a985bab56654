//! Reassembly of a transition the server sent in parts (protocol §8: every part but the last
//! is marked `continued`): the parts' modifications are held, within a bound on their bytes,
//! until the last part arrives, and then applied together like one transition.

use query_engine::protocol::Modification;

/// A transition put together from its parts, to be applied at once.
#[derive(Debug, PartialEq)]
pub(crate) struct WholeTransition {
    pub start_ts: u64,
    pub end_ts: u64,
    pub modifications: Vec<Modification>,
}

/// The parts of one transition received so far on a connection.
pub(crate) struct TransitionParts {
    /// Most frame bytes the parts of one transition may take together.
    max_bytes: u64,
    pending: Option<Pending>,
}

struct Pending {
    start_ts: u64,
    end_ts: u64,
    modifications: Vec<Modification>,
    /// Frame bytes of the parts so far.
    bytes: u64,
}

impl TransitionParts {
    pub(crate) fn new(max_bytes: u64) -> Self {
        TransitionParts {
            max_bytes,
            pending: None,
        }
    }

    /// Whether a transition's first parts have come and its last has not.
    pub(crate) fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes one `Transition` message whose frame had `frame_bytes`: the whole transition once
    /// its last part is in (a transition in one frame at once), `None` while parts are
    /// missing. `Err` is a protocol violation, after which the connection must be dropped:
    /// a part whose timestamps differ from the first part's, or parts over the byte bound
    /// (a server that never ends a transition would otherwise fill the client's memory).
    pub(crate) fn push(
        &mut self,
        start_ts: u64,
        end_ts: u64,
        modifications: Vec<Modification>,
        continued: bool,
        frame_bytes: usize,
    ) -> Result<Option<WholeTransition>, String> {
        let frame_bytes = frame_bytes as u64;
        let pending = match self.pending.take() {
            None if !continued => {
                return Ok(Some(WholeTransition {
                    start_ts,
                    end_ts,
                    modifications,
                }))
            }
            None => Pending {
                start_ts,
                end_ts,
                modifications,
                bytes: frame_bytes,
            },
            Some(mut pending) => {
                if (start_ts, end_ts) != (pending.start_ts, pending.end_ts) {
                    return Err(format!(
                        "a part of the transition {}→{} came as {start_ts}→{end_ts}",
                        pending.start_ts, pending.end_ts
                    ));
                }
                pending.bytes = pending.bytes.saturating_add(frame_bytes);
                pending.modifications.extend(modifications);
                pending
            }
        };
        if pending.bytes > self.max_bytes {
            return Err(format!(
                "a transition sent in parts exceeds {} bytes",
                self.max_bytes
            ));
        }
        if continued {
            self.pending = Some(pending);
            return Ok(None);
        }
        Ok(Some(WholeTransition {
            start_ts: pending.start_ts,
            end_ts: pending.end_ts,
            modifications: pending.modifications,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(query_id: u32) -> Modification {
        Modification::Removed { query_id }
    }

    #[test]
    fn a_transition_in_one_frame_passes_straight_through() {
        let mut parts = TransitionParts::new(10);
        let whole = parts.push(1, 2, vec![removed(1)], false, 1_000).unwrap();
        assert_eq!(
            whole,
            Some(WholeTransition {
                start_ts: 1,
                end_ts: 2,
                modifications: vec![removed(1)],
            })
        );
        assert!(!parts.in_progress());
    }

    #[test]
    fn parts_are_applied_together_after_the_last() {
        let mut parts = TransitionParts::new(300);
        assert_eq!(parts.push(4, 9, vec![removed(1)], true, 100), Ok(None));
        assert!(parts.in_progress());
        assert_eq!(
            parts.push(4, 9, vec![removed(2), removed(3)], true, 100),
            Ok(None)
        );
        let whole = parts.push(4, 9, vec![removed(4)], false, 100).unwrap();
        assert_eq!(
            whole,
            Some(WholeTransition {
                start_ts: 4,
                end_ts: 9,
                modifications: vec![removed(1), removed(2), removed(3), removed(4)],
            })
        );
        assert!(!parts.in_progress());
        // The next transition starts afresh.
        assert!(parts.push(9, 10, vec![], false, 50).unwrap().is_some());
    }

    #[test]
    fn parts_with_other_timestamps_are_a_protocol_violation() {
        for (start_ts, end_ts) in [(4, 10), (5, 9), (0, 0)] {
            let mut parts = TransitionParts::new(1_000);
            parts.push(4, 9, vec![removed(1)], true, 10).unwrap();
            let err = parts
                .push(start_ts, end_ts, vec![removed(2)], false, 10)
                .unwrap_err();
            assert!(err.contains("4→9"), "{err}");
        }
    }

    /// A server that keeps sending parts is cut off at the bound, not buffered without end.
    #[test]
    fn parts_over_the_bound_are_a_protocol_violation() {
        let mut parts = TransitionParts::new(250);
        parts.push(1, 2, vec![removed(1)], true, 100).unwrap();
        parts.push(1, 2, vec![removed(2)], true, 100).unwrap();
        let err = parts.push(1, 2, vec![removed(3)], true, 100).unwrap_err();
        assert!(err.contains("250 bytes"), "{err}");
        // The last part counts too.
        let mut parts = TransitionParts::new(250);
        parts.push(1, 2, vec![removed(1)], true, 200).unwrap();
        assert!(parts.push(1, 2, vec![removed(2)], false, 51).is_err());
    }
}
