"""The shapes of the API's answers and of presence events, as docs/openapi.json gives them."""

from __future__ import annotations

from typing import Any, List, Optional, TypedDict


class ConnectUrl(TypedDict):
    """``connect_url``: the URL for the browser, its home node, and the token's expiry
    (seconds since the Unix epoch; tokens live 60 s and open one socket)."""

    url: str
    node: str
    expires_at: int


class NodeReport(TypedDict):
    """One home node of a private message's receivers, and whether a running node took it."""

    node: str
    receivers: List[str]
    taken: bool


class SendResult(TypedDict):
    """``send``: the message id, one report per home node, and the receivers whose home node
    was not running."""

    message_id: str
    nodes: List[NodeReport]
    unreachable: List[str]


class FanOutResult(TypedDict):
    """``send_chan`` and ``broadcast``: the message id and how many nodes took it."""

    message_id: str
    nodes: int


class ChanMembersPage(TypedDict):
    """A page of a channel's members; ``cursor`` is ``None`` after the last page."""

    members: List[str]
    cursor: Optional[str]


class OnlinePage(TypedDict):
    """A page of online clients in id order; ``cursor`` is ``None`` after the last page."""

    clients: List[str]
    cursor: Optional[str]


class ChanInfo(TypedDict):
    """A channel with members, how many, and how many are online."""

    chan: str
    members: int
    online: int


class _PresenceEventFields(TypedDict):
    id: str
    kind: str
    client: str
    node: str
    at: int
    conns: int


class PresenceEvent(_PresenceEventFields, total=False):
    """An online or offline event, in a webhook or from ``events``: ``kind`` is ``online`` or
    ``offline``, ``at`` ms since the Unix epoch, ``conns`` the client's connections on ``node``
    after it, ``meta`` the connect token's (absent when it had none). ``id`` is stable:
    delivery is at least once, so de-duplicate on it."""

    meta: Any


class EventsPage(TypedDict):
    """``events``: the events after ``after``, and the id to pass as ``after`` next."""

    events: List[PresenceEvent]
    last_id: Optional[str]
