//! The room provider: what creating a meeting's call asks for (`RoomRequest`), what changing
//! one user's membership of it asks for (`MemberChange`), and the two ways of answering them
//! (and of ending the call), Stream's API or the local provider. The call id is always the
//! meeting id, so a room is created at most once per meeting however often it is asked for,
//! and a webhook's call id names its meeting.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{call_cid, is_call_id, StreamClient, StreamError, DEFAULT_CALL_TYPE};

/// Most members a room is created with (Stream's limit per request); hosts come first. Other
/// participants can still join the call: membership only pre-assigns call roles.
pub const MAX_ROOM_MEMBERS: usize = 100;

/// The call role hosts get.
pub const HOST_CALL_ROLE: &str = "host";
/// The call role of every other member: Stream's built-in `call_member`, what a member added
/// without a role (as room creation adds non-hosts) gets. A demoted host is given it
/// explicitly, since updating a member without a role leaves its role as it was.
pub const MEMBER_CALL_ROLE: &str = "call_member";

/// Most calls the local provider remembers; the oldest is forgotten first.
pub const MAX_LOCAL_CALLS: usize = 1_000;
/// Most membership changes it keeps per call, the newest.
pub const MAX_LOCAL_CHANGES: usize = 1_000;

/// One member of the call: a LinkedUp user (its document id is its Stream user id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomMember {
    pub user_id: String,
    /// Shown in the call; Stream's user record gets it.
    pub name: Option<String>,
    /// Hosts get Stream's `host` call role, others the call type's default member role.
    pub host: bool,
}

impl RoomMember {
    /// `HOST_CALL_ROLE` or `MEMBER_CALL_ROLE`.
    pub fn call_role(&self) -> &'static str {
        if self.host {
            HOST_CALL_ROLE
        } else {
            MEMBER_CALL_ROLE
        }
    }
}

/// What a meeting's room is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRequest {
    /// Becomes the call id.
    pub meeting_id: String,
    /// The meeting's organizer, the call's `created_by_id`.
    pub created_by: String,
    /// At most `MAX_ROOM_MEMBERS`.
    pub members: Vec<RoomMember>,
    /// Stored on the call as custom data.
    pub title: String,
    pub org_id: Option<String>,
}

/// A change to one user's membership of a meeting's call, bringing it in line with the
/// meeting's participants. Applying one twice is harmless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// The user (a participant) is a member with the call role `member.call_role()`; with
    /// `unblock`, the block an earlier removal from the meeting set is lifted first.
    Set { member: RoomMember, unblock: bool },
    /// The user (no longer a participant) is blocked from the call, so their call token no
    /// longer admits them, and is no longer a member.
    Remove { user_id: String },
}

impl MemberChange {
    pub fn user_id(&self) -> &str {
        match self {
            MemberChange::Set { member, .. } => &member.user_id,
            MemberChange::Remove { user_id } => user_id,
        }
    }
}

/// Creates rooms: Stream's REST API, or locally without a network.
#[derive(Clone, Debug)]
pub enum RoomProvider {
    /// No network: the room id is `<call type>:<meeting id>`, exactly what Stream would
    /// return for the same meeting, so switching providers does not change ids. What Stream
    /// would hold about each call (members, blocks, ended) is kept in `calls`, in memory.
    Local {
        call_type: String,
        calls: LocalCalls,
    },
    Stream(StreamClient),
}

impl Default for RoomProvider {
    fn default() -> Self {
        RoomProvider::local(DEFAULT_CALL_TYPE)
    }
}

impl RoomProvider {
    /// The local provider for rooms of `call_type`, remembering no calls yet.
    pub fn local(call_type: impl Into<String>) -> Self {
        RoomProvider::Local {
            call_type: call_type.into(),
            calls: LocalCalls::default(),
        }
    }

    /// The call type rooms are created with; webhooks about other call types are not ours.
    pub fn call_type(&self) -> &str {
        match self {
            RoomProvider::Local { call_type, .. } => call_type,
            RoomProvider::Stream(client) => client.call_type(),
        }
    }

    /// What the local provider holds about its calls (shared by its clones); `None` for
    /// Stream's API.
    pub fn local_calls(&self) -> Option<&LocalCalls> {
        match self {
            RoomProvider::Local { calls, .. } => Some(calls),
            RoomProvider::Stream(_) => None,
        }
    }

    /// Ends the meeting's call for everyone in it; the local provider marks it ended.
    pub async fn end_call(&self, meeting_id: &str) -> Result<(), StreamError> {
        check_call_id(meeting_id)?;
        match self {
            RoomProvider::Local { calls, .. } => {
                calls.with_call(meeting_id, |call| call.ended = true);
                Ok(())
            }
            RoomProvider::Stream(client) => client.end_call(meeting_id).await,
        }
    }

    /// Gets or creates the meeting's call and returns its room id (the call's cid).
    pub async fn create_room(&self, request: &RoomRequest) -> Result<String, StreamError> {
        check_call_id(&request.meeting_id)?;
        if request.members.len() > MAX_ROOM_MEMBERS {
            return Err(StreamError::InvalidRequest(format!(
                "{} members; at most {MAX_ROOM_MEMBERS}",
                request.members.len()
            )));
        }
        match self {
            RoomProvider::Local { call_type, calls } => {
                calls.get_or_create(request);
                Ok(call_cid(call_type, &request.meeting_id))
            }
            RoomProvider::Stream(client) => client.get_or_create_call(request).await,
        }
    }

    /// Applies `change` to the meeting's call (which exists: the meeting has a room).
    pub async fn change_member(
        &self,
        meeting_id: &str,
        change: &MemberChange,
    ) -> Result<(), StreamError> {
        check_call_id(meeting_id)?;
        if change.user_id().is_empty() {
            return Err(StreamError::InvalidRequest("an empty user id".into()));
        }
        match self {
            RoomProvider::Local { calls, .. } => {
                calls.with_call(meeting_id, |call| call.apply(change));
                Ok(())
            }
            RoomProvider::Stream(client) => client.change_member(meeting_id, change).await,
        }
    }
}

fn check_call_id(meeting_id: &str) -> Result<(), StreamError> {
    if is_call_id(meeting_id) {
        Ok(())
    } else {
        Err(StreamError::InvalidRequest(format!(
            "{meeting_id:?} cannot be a call id"
        )))
    }
}

/// What the local provider holds about one call: what Stream would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalCall {
    /// User id → call role (`HOST_CALL_ROLE` or `MEMBER_CALL_ROLE`).
    pub members: BTreeMap<String, String>,
    /// Users who may not join the call.
    pub blocked: BTreeSet<String>,
    pub ended: bool,
    /// The membership changes applied to the call, in order (the last `MAX_LOCAL_CHANGES`).
    pub changes: Vec<MemberChange>,
}

impl LocalCall {
    fn apply(&mut self, change: &MemberChange) {
        match change {
            MemberChange::Set { member, unblock } => {
                if *unblock {
                    self.blocked.remove(&member.user_id);
                }
                self.members
                    .insert(member.user_id.clone(), member.call_role().to_string());
            }
            MemberChange::Remove { user_id } => {
                self.blocked.insert(user_id.clone());
                self.members.remove(user_id);
            }
        }
        if self.changes.len() >= MAX_LOCAL_CHANGES {
            self.changes.remove(0);
        }
        self.changes.push(change.clone());
    }
}

/// The local provider's calls by meeting id, at most `MAX_LOCAL_CALLS` (a long-running
/// server without Stream forgets the oldest). Cheap to clone; clones share the calls.
#[derive(Clone, Default)]
pub struct LocalCalls {
    inner: Arc<Mutex<LocalState>>,
}

#[derive(Default)]
struct LocalState {
    calls: BTreeMap<String, LocalCall>,
    /// Meeting ids, oldest call first.
    order: VecDeque<String>,
}

impl fmt::Debug for LocalCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCalls")
            .field("calls", &self.inner.lock().calls.len())
            .finish()
    }
}

impl LocalCalls {
    /// The meeting's call as it is now, if the provider knows it.
    pub fn call(&self, meeting_id: &str) -> Option<LocalCall> {
        self.inner.lock().calls.get(meeting_id).cloned()
    }

    /// Creates the call with the request's members unless it exists (get-or-create, as
    /// Stream does: an existing call is returned unchanged).
    fn get_or_create(&self, request: &RoomRequest) {
        let mut state = self.inner.lock();
        if state.calls.contains_key(&request.meeting_id) {
            return;
        }
        let call = LocalCall {
            members: request
                .members
                .iter()
                .map(|m| (m.user_id.clone(), m.call_role().to_string()))
                .collect(),
            ..LocalCall::default()
        };
        state.insert(request.meeting_id.clone(), call);
    }

    /// Runs `f` on the meeting's call, first created empty if the provider does not know it
    /// (it was created before a restart, or forgotten): the call exists whenever its meeting
    /// has a room.
    fn with_call(&self, meeting_id: &str, f: impl FnOnce(&mut LocalCall)) {
        let mut state = self.inner.lock();
        if !state.calls.contains_key(meeting_id) {
            state.insert(meeting_id.to_string(), LocalCall::default());
        }
        if let Some(call) = state.calls.get_mut(meeting_id) {
            f(call);
        }
    }
}

impl LocalState {
    fn insert(&mut self, meeting_id: String, call: LocalCall) {
        while self.order.len() >= MAX_LOCAL_CALLS {
            if let Some(oldest) = self.order.pop_front() {
                self.calls.remove(&oldest);
            }
        }
        self.order.push_back(meeting_id.clone());
        self.calls.insert(meeting_id, call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(meeting_id: &str) -> RoomRequest {
        RoomRequest {
            meeting_id: meeting_id.into(),
            created_by: "u1".into(),
            members: Vec::new(),
            title: "Standup".into(),
            org_id: None,
        }
    }

    #[tokio::test]
    async fn the_local_provider_derives_the_room_from_the_meeting() {
        let local = RoomProvider::default();
        let room = local.create_room(&request("m0123")).await.unwrap();
        assert_eq!(room, "default:m0123");
        assert_eq!(local.create_room(&request("m0123")).await.unwrap(), room);
        assert_eq!(local.call_type(), "default");
        assert!(matches!(
            local.create_room(&request("not/an id")).await,
            Err(StreamError::InvalidRequest(_))
        ));
        let mut crowded = request("m1");
        crowded.members = (0..=MAX_ROOM_MEMBERS)
            .map(|i| RoomMember {
                user_id: format!("u{i}"),
                name: None,
                host: false,
            })
            .collect();
        assert!(matches!(
            local.create_room(&crowded).await,
            Err(StreamError::InvalidRequest(_))
        ));
    }

    fn member(user_id: &str, host: bool) -> RoomMember {
        RoomMember {
            user_id: user_id.into(),
            name: None,
            host,
        }
    }

    #[tokio::test]
    async fn the_local_provider_keeps_what_stream_would_about_the_call() {
        let local = RoomProvider::default();
        let calls = local.local_calls().unwrap().clone();
        let mut created = request("m1");
        created.members = vec![member("u1", true), member("u2", false)];
        local.create_room(&created).await.unwrap();
        let call = calls.call("m1").unwrap();
        assert_eq!(call.members["u1"], HOST_CALL_ROLE);
        assert_eq!(call.members["u2"], MEMBER_CALL_ROLE);
        // Getting the call again changes nothing.
        local.create_room(&request("m1")).await.unwrap();
        assert_eq!(calls.call("m1").unwrap(), call);

        let promote = MemberChange::Set {
            member: member("u2", true),
            unblock: false,
        };
        let remove = MemberChange::Remove {
            user_id: "u2".into(),
        };
        let readmit = MemberChange::Set {
            member: member("u2", false),
            unblock: true,
        };
        local.change_member("m1", &promote).await.unwrap();
        assert_eq!(calls.call("m1").unwrap().members["u2"], HOST_CALL_ROLE);
        local.change_member("m1", &remove).await.unwrap();
        let call = calls.call("m1").unwrap();
        assert!(!call.members.contains_key("u2"));
        assert!(call.blocked.contains("u2"));
        local.change_member("m1", &readmit).await.unwrap();
        let call = calls.call("m1").unwrap();
        assert_eq!(call.members["u2"], MEMBER_CALL_ROLE);
        assert!(call.blocked.is_empty());
        assert_eq!(call.changes, [promote, remove.clone(), readmit]);
        assert!(!call.ended);
        local.end_call("m1").await.unwrap();
        assert!(calls.call("m1").unwrap().ended);

        // A call it does not know (created before a restart) is changed all the same.
        local.change_member("m2", &remove).await.unwrap();
        assert!(calls.call("m2").unwrap().blocked.contains("u2"));
        assert!(matches!(
            local.change_member("not/an id", &remove).await,
            Err(StreamError::InvalidRequest(_))
        ));
        // Clones share the calls; the oldest are forgotten past the cap.
        assert!(RoomProvider::default()
            .local_calls()
            .unwrap()
            .call("m1")
            .is_none());
        for i in 0..MAX_LOCAL_CALLS {
            local.end_call(&format!("x{i}")).await.unwrap();
        }
        assert!(calls.call("m1").is_none() && calls.call("m2").is_none());
        assert!(calls.call(&format!("x{}", MAX_LOCAL_CALLS - 1)).is_some());
    }
}
