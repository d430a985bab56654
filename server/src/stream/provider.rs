//! The room provider: what creating a meeting's call asks for (`RoomRequest`) and the two ways
//! of answering it (and of ending the call), Stream's API or the local provider. The call id is always the meeting id,
//! so a room is created at most once per meeting however often it is asked for, and a
//! webhook's call id names its meeting.

use super::{call_cid, is_call_id, StreamClient, StreamError, DEFAULT_CALL_TYPE};

/// Most members a room is created with (Stream's limit per request); hosts come first. Other
/// participants can still join the call: membership only pre-assigns call roles.
pub const MAX_ROOM_MEMBERS: usize = 100;

/// One member of the call: a LinkedUp user (its document id is its Stream user id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomMember {
    pub user_id: String,
    /// Shown in the call; Stream's user record gets it.
    pub name: Option<String>,
    /// Hosts get Stream's `host` call role, others the call type's default member role.
    pub host: bool,
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

/// Creates rooms: Stream's REST API, or locally without a network.
#[derive(Clone, Debug)]
pub enum RoomProvider {
    /// No network: the room id is `<call type>:<meeting id>`, exactly what Stream would
    /// return for the same meeting, so switching providers does not change ids.
    Local {
        call_type: String,
    },
    Stream(StreamClient),
}

impl Default for RoomProvider {
    fn default() -> Self {
        RoomProvider::Local {
            call_type: DEFAULT_CALL_TYPE.to_string(),
        }
    }
}

impl RoomProvider {
    /// The call type rooms are created with; webhooks about other call types are not ours.
    pub fn call_type(&self) -> &str {
        match self {
            RoomProvider::Local { call_type } => call_type,
            RoomProvider::Stream(client) => client.call_type(),
        }
    }

    /// Ends the meeting's call for everyone in it; the local provider has nothing to end.
    pub async fn end_call(&self, meeting_id: &str) -> Result<(), StreamError> {
        if !is_call_id(meeting_id) {
            return Err(StreamError::InvalidRequest(format!(
                "{meeting_id:?} cannot be a call id"
            )));
        }
        match self {
            RoomProvider::Local { .. } => Ok(()),
            RoomProvider::Stream(client) => client.end_call(meeting_id).await,
        }
    }

    /// Gets or creates the meeting's call and returns its room id (the call's cid).
    pub async fn create_room(&self, request: &RoomRequest) -> Result<String, StreamError> {
        if !is_call_id(&request.meeting_id) {
            return Err(StreamError::InvalidRequest(format!(
                "{:?} cannot be a call id",
                request.meeting_id
            )));
        }
        if request.members.len() > MAX_ROOM_MEMBERS {
            return Err(StreamError::InvalidRequest(format!(
                "{} members; at most {MAX_ROOM_MEMBERS}",
                request.members.len()
            )));
        }
        match self {
            RoomProvider::Local { call_type } => Ok(call_cid(call_type, &request.meeting_id)),
            RoomProvider::Stream(client) => client.get_or_create_call(request).await,
        }
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
}
