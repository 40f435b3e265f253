//! The API's methods: their names in `POST /api/v1/<method>`, and the call each one makes,
//! bounded by the API timeout so that a Redis outage answers 503 instead of hanging.

use std::time::Duration;

use serde_json::Value;

use super::errors::ApiError;
use super::{ApiState, channels, connect, events, presence, sends};

/// One API method. Every one but `Batch` is exactly one imclient call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `ImClient::prev_connect_server`.
    ConnectUrl,
    /// `ImClient::send_message_with_id`.
    Send,
    /// `ImClient::send_chan_message_with_id`.
    SendChan,
    /// `ImClient::broadcast_with_id`.
    Broadcast,
    /// `ImClient::join_chan` / `join_chan_many`.
    Join,
    /// `ImClient::leave_chan` / `leave_chan_many`.
    Leave,
    /// `ImClient::chan_clients_page`.
    ChanMembers,
    /// `ImClient::chan_member_count`.
    ChanMemberCount,
    /// `ImClient::chan_online`.
    ChanOnline,
    /// `ImClient::client_chans`.
    ClientChans,
    /// `ImClient::chans`.
    Chans,
    /// `ImClient::delete_chan`.
    DeleteChan,
    /// `ImClient::has_online`.
    HasOnline,
    /// `ImClient::online_clients`, a page of it.
    Online,
    /// `ImClient::online_count`.
    OnlineCount,
    /// `ImClient::force_offline`.
    Kick,
    /// `ImClient::live_nodes`.
    Nodes,
    /// `ImClient::read_events`: a page of events, long-polled.
    Events,
    /// Many of the others in one request.
    Batch,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 19] = [
        Method::ConnectUrl,
        Method::Send,
        Method::SendChan,
        Method::Broadcast,
        Method::Join,
        Method::Leave,
        Method::ChanMembers,
        Method::ChanMemberCount,
        Method::ChanOnline,
        Method::ClientChans,
        Method::Chans,
        Method::DeleteChan,
        Method::HasOnline,
        Method::Online,
        Method::OnlineCount,
        Method::Kick,
        Method::Nodes,
        Method::Events,
        Method::Batch,
    ];

    /// The name in the route and in batch items.
    pub fn name(self) -> &'static str {
        match self {
            Method::ConnectUrl => "connect_url",
            Method::Send => "send",
            Method::SendChan => "send_chan",
            Method::Broadcast => "broadcast",
            Method::Join => "join",
            Method::Leave => "leave",
            Method::ChanMembers => "chan_members",
            Method::ChanMemberCount => "chan_member_count",
            Method::ChanOnline => "chan_online",
            Method::ClientChans => "client_chans",
            Method::Chans => "chans",
            Method::DeleteChan => "delete_chan",
            Method::HasOnline => "has_online",
            Method::Online => "online",
            Method::OnlineCount => "online_count",
            Method::Kick => "kick",
            Method::Nodes => "nodes",
            Method::Events => "events",
            Method::Batch => "batch",
        }
    }

    /// The method called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Makes the call `method` names with `params`, within the API timeout.
pub async fn call(state: &ApiState, method: Method, params: Value) -> Result<Value, ApiError> {
    let im = &state.im;
    let work = async {
        match method {
            Method::ConnectUrl => connect::connect_url(im, state.can_sign, params),
            Method::Send => sends::send(im, params).await,
            Method::SendChan => sends::send_chan(im, params).await,
            Method::Broadcast => sends::broadcast(im, params).await,
            Method::Join => channels::join(im, params).await,
            Method::Leave => channels::leave(im, params).await,
            Method::ChanMembers => channels::chan_members(im, params).await,
            Method::ChanMemberCount => channels::chan_member_count(im, params).await,
            Method::ChanOnline => channels::chan_online(im, params).await,
            Method::ClientChans => channels::client_chans(im, params).await,
            Method::Chans => channels::chans(im, params).await,
            Method::DeleteChan => channels::delete_chan(im, params).await,
            Method::HasOnline => presence::has_online(im, params).await,
            Method::Online => presence::online(im, params).await,
            Method::OnlineCount => presence::online_count(im, params).await,
            Method::Kick => presence::kick(im, params).await,
            Method::Nodes => presence::nodes(im, params),
            Method::Events => events::events(im, params).await,
            Method::Batch => Err(ApiError::bad_field(
                "nested_batch",
                "method",
                "a batch cannot hold another batch; put every call in one requests list",
            )),
        }
    };
    // A long poll waits on purpose, for as long as it asked (bounded by its own maximum).
    let bound = match method {
        Method::Events => state.timeout + Duration::from_millis(events::MAX_WAIT_MS),
        _ => state.timeout,
    };
    match tokio::time::timeout(bound, work).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::redis_unavailable(format!(
            "no answer within {} ms",
            state.timeout.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn every_method_is_found_by_its_name_and_names_are_unique() {
        for method in Method::ALL {
            assert_eq!(Method::from_name(method.name()), Some(method));
        }
        assert_eq!(Method::from_name("Send"), None);
        assert_eq!(Method::from_name(""), None);
    }
}
