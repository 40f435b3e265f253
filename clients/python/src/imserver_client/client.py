"""The API client: one method per method of docs/API.md, each a ``POST /api/v1/<method>``
through the standard library's urllib, answers parsed into the shapes of :mod:`.types`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import ApiError
from .types import (
    ChanInfo,
    ChanMembersPage,
    ConnectUrl,
    EventsPage,
    FanOutResult,
    OnlinePage,
    SendResult,
)

ROUTE_PREFIX = "/api/v1/"

#: One client id, or several.
Clients = Union[str, Sequence[str]]


@dataclass(frozen=True)
class BatchReply:
    """One item's reply in a batch: ``result`` when it worked (``status`` 200), ``error``
    otherwise. Items after one that found Redis unavailable answer 503 ``not_attempted``:
    retry exactly the items that are not :attr:`ok`.

        >>> replies = api.batch([("send", {"sender": "a", "receivers": ["bob"], "payload": 1})])  # doctest: +SKIP
        >>> replies[0].ok  # doctest: +SKIP
        True
    """

    status: int
    result: Optional[Dict[str, Any]] = None
    error: Optional[ApiError] = None

    @property
    def ok(self) -> bool:
        """Whether the item's call worked."""
        return self.status == 200


class Client:
    """A backend's handle on a node's HTTP API (``--api-listen``).

    ``base_url`` is the API's address (``http://10.0.0.5:7001``), ``api_key`` one of the node's
    ``--api-key`` values (``None`` only for a ``--dev`` node), ``timeout`` the seconds to wait
    for an answer. Every method raises :class:`ApiError` when the node refuses the call or
    does not answer. The client holds no connection between calls, so one may be shared by
    threads.

        >>> api = Client("http://127.0.0.1:7001", api_key="...")
        >>> api.connect_url("alice", meta={"name": "Alice"})["url"]  # doctest: +SKIP
        'ws://127.0.0.1:6001/ws?token=eyJ...'
    """

    def __init__(
        self, base_url: str, api_key: Optional[str] = None, timeout: float = 10.0
    ) -> None:
        if "://" not in base_url:
            base_url = "http://" + base_url
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        # Never the key.
        return f"Client({self.base_url!r})"

    def call(self, method: str, params: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = None) -> Any:
        """Calls ``method`` with ``params`` and answers its result object: for a method this
        client has no wrapper for yet.

            >>> api.call("online_count")  # doctest: +SKIP
            {'count': 3}
        """
        body = json.dumps(dict(params or {})).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url + ROUTE_PREFIX + method, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as refusal:
            raw = refusal.read()
            try:
                body_json = json.loads(raw)
            except ValueError:
                body_json = raw.decode("utf-8", "replace")
            raise ApiError.from_body(
                refusal.code, body_json, _retry_after(refusal.headers.get("Retry-After"))
            ) from None
        except (urllib.error.URLError, OSError) as failure:
            reason = getattr(failure, "reason", failure)
            raise ApiError(
                None,
                "no_answer",
                f"no answer from {self.base_url} ({reason}); a send may still have gone out: "
                "retry it with the same message_id",
            ) from failure

    # Connecting

    def connect_url(self, client: str, meta: Any = None) -> ConnectUrl:
        """A connect URL for ``client``'s browser, its home node and the token's expiry.
        ``meta`` is any JSON, echoed in the client's online/offline events.

            >>> api.connect_url("alice")["node"]  # doctest: +SKIP
            'ws://127.0.0.1:6001'
        """
        params: Dict[str, Any] = {"client": client}
        if meta is not None:
            params["meta"] = meta
        return self.call("connect_url", params)  # type: ignore[no-any-return]

    # Sending

    def send(
        self,
        sender: str,
        receivers: Clients,
        payload: Any,
        *,
        receipt: bool = False,
        message_id: Optional[str] = None,
    ) -> SendResult:
        """A private message to every connection of each receiver. Give a ``message_id`` of
        your own, kept for every retry, to retry safely after a 503 or no answer.

            >>> api.send("system", ["alice"], {"text": "hi"})["unreachable"]  # doctest: +SKIP
            []
        """
        params = {"sender": sender, "receivers": _many(receivers), "payload": payload}
        if receipt:
            params["receipt"] = True
        if message_id is not None:
            params["message_id"] = message_id
        return self.call("send", params)  # type: ignore[no-any-return]

    def send_chan(
        self,
        sender: str,
        chan: str,
        payload: Any,
        *,
        exclude_sender: bool = False,
        message_id: Optional[str] = None,
    ) -> FanOutResult:
        """A message to every online member of ``chan``.

            >>> api.send_chan("system", "room:1", {"text": "hi all"})["nodes"]  # doctest: +SKIP
            1
        """
        params: Dict[str, Any] = {"sender": sender, "chan": chan, "payload": payload}
        if exclude_sender:
            params["exclude_sender"] = True
        if message_id is not None:
            params["message_id"] = message_id
        return self.call("send_chan", params)  # type: ignore[no-any-return]

    def broadcast(
        self, sender: str, payload: Any, *, message_id: Optional[str] = None
    ) -> FanOutResult:
        """A message to every online client of every node.

            >>> api.broadcast("system", {"text": "maintenance at noon"})  # doctest: +SKIP
        """
        params: Dict[str, Any] = {"sender": sender, "payload": payload}
        if message_id is not None:
            params["message_id"] = message_id
        return self.call("broadcast", params)  # type: ignore[no-any-return]

    # Channels

    def join(self, chan: str, clients: Clients) -> int:
        """Makes one client (a string) or several members of ``chan``, online or not; returns
        once online members' nodes receive the channel. Answers how many clients.

            >>> api.join("room:1", ["alice", "bob"])  # doctest: +SKIP
            2
        """
        return int(self.call("join", _membership(chan, clients))["clients"])

    def leave(self, chan: str, clients: Clients) -> int:
        """Takes one client or several out of ``chan``. Idempotent: a call that failed half-way
        can be sent again whole. Answers how many clients.

            >>> api.leave("room:1", "bob")  # doctest: +SKIP
            1
        """
        return int(self.call("leave", _membership(chan, clients))["clients"])

    def chan_members(self, chan: str, cursor: Optional[str] = None) -> ChanMembersPage:
        """One page of ``chan``'s members; pass the answer's ``cursor`` for the next. A page
        may be empty while the cursor is not ``None``.

            >>> api.chan_members("room:1")  # doctest: +SKIP
            {'members': ['alice', 'bob'], 'cursor': None}
        """
        params: Dict[str, Any] = {"chan": chan}
        if cursor is not None:
            params["cursor"] = cursor
        return self.call("chan_members", params)  # type: ignore[no-any-return]

    def iter_chan_members(self, chan: str) -> Iterator[str]:
        """Every member of ``chan``, page after page (a member may show twice if the set
        changes meanwhile).

            >>> sorted(api.iter_chan_members("room:1"))  # doctest: +SKIP
            ['alice', 'bob']
        """
        cursor: Optional[str] = None
        while True:
            page = self.chan_members(chan, cursor)
            yield from page["members"]
            cursor = page["cursor"]
            if cursor is None:
                return

    def chan_member_count(self, chan: str) -> int:
        """How many members ``chan`` has, online or not.

            >>> api.chan_member_count("room:1")  # doctest: +SKIP
            2
        """
        return int(self.call("chan_member_count", {"chan": chan})["members"])

    def chan_online(self, chan: str) -> int:
        """How many of ``chan``'s members are online.

            >>> api.chan_online("room:1")  # doctest: +SKIP
            1
        """
        return int(self.call("chan_online", {"chan": chan})["online"])

    def client_chans(self, client: str) -> List[str]:
        """``client``'s channels, sorted.

            >>> api.client_chans("alice")  # doctest: +SKIP
            ['room:1']
        """
        return list(self.call("client_chans", {"client": client})["chans"])

    def chans(self) -> List[ChanInfo]:
        """Every channel with members, sorted by name.

            >>> api.chans()  # doctest: +SKIP
            [{'chan': 'room:1', 'members': 2, 'online': 1}]
        """
        return list(self.call("chans")["chans"])

    def delete_chan(self, chan: str) -> int:
        """Deletes ``chan``; answers how many members it had.

            >>> api.delete_chan("room:old")  # doctest: +SKIP
            0
        """
        return int(self.call("delete_chan", {"chan": chan})["members"])

    # Presence

    def has_online(self, client: str) -> bool:
        """Whether ``client`` has a connection open anywhere.

            >>> api.has_online("alice")  # doctest: +SKIP
            True
        """
        return bool(self.call("has_online", {"client": client})["online"])

    def online(self, cursor: Optional[str] = None, limit: Optional[int] = None) -> OnlinePage:
        """A page of online clients in id order (``limit``, 1 to 10,000, default 1,000, after
        ``cursor``). For a number, use :meth:`online_count`.

            >>> api.online(limit=2)  # doctest: +SKIP
            {'clients': ['alice', 'bob'], 'cursor': 'bob'}
        """
        params: Dict[str, Any] = {}
        if cursor is not None:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        return self.call("online", params)  # type: ignore[no-any-return]

    def iter_online(self, page_size: Optional[int] = None) -> Iterator[str]:
        """Every online client, page after page.

            >>> list(api.iter_online())  # doctest: +SKIP
            ['alice', 'bob']
        """
        cursor: Optional[str] = None
        while True:
            page = self.online(cursor, page_size)
            yield from page["clients"]
            cursor = page["cursor"]
            if cursor is None:
                return

    def online_count(self) -> int:
        """How many clients are online.

            >>> api.online_count()  # doctest: +SKIP
            2
        """
        return int(self.call("online_count")["count"])

    def kick(self, client: str) -> bool:
        """Closes every connection of ``client`` with 4002 (do not reconnect); answers whether
        its home node was running.

            >>> api.kick("mallory")  # doctest: +SKIP
            True
        """
        return bool(self.call("kick", {"client": client})["taken"])

    def nodes(self) -> List[str]:
        """The configured nodes holding their lease, as the node last read them.

            >>> api.nodes()  # doctest: +SKIP
            ['ws://127.0.0.1:6001']
        """
        return list(self.call("nodes")["nodes"])

    def events(
        self,
        after: Optional[str] = None,
        *,
        limit: Optional[int] = None,
        wait_ms: Optional[int] = None,
    ) -> EventsPage:
        """Presence events after the stream id ``after`` (``None``: from now on), waiting up to
        ``wait_ms`` (at most 30,000) for one: the pull alternative to the webhook. Pass the
        answer's ``last_id`` as ``after`` next time.

            >>> page = api.events(None, wait_ms=25000)  # doctest: +SKIP
            >>> page = api.events(page["last_id"])  # doctest: +SKIP
        """
        params: Dict[str, Any] = {"after": after}
        if limit is not None:
            params["limit"] = limit
        if wait_ms is not None:
            params["wait_ms"] = wait_ms
        # The node may hold the call for wait_ms: wait that long on top of the usual timeout.
        timeout = self.timeout + (wait_ms if wait_ms is not None else 25000) / 1000
        return self.call("events", params, timeout=timeout)  # type: ignore[no-any-return]

    # Batches

    def batch(self, calls: Iterable[Tuple[str, Mapping[str, Any]]]) -> List[BatchReply]:
        """Many calls in one request (at most the node's ``--api-max-batch``, 100 by
        default), made in order; one :class:`BatchReply` per call. A bad item does not stop
        the others; raises :class:`ApiError` only when the whole batch is refused.

            >>> replies = api.batch([
            ...     ("send", {"sender": "a", "receivers": ["bob"], "payload": "one"}),
            ...     ("join", {"chan": "room:1", "clients": ["bob", "carol"]}),
            ... ])  # doctest: +SKIP
            >>> [r.ok for r in replies]  # doctest: +SKIP
            [True, True]
        """
        requests = [{"method": method, "params": dict(params)} for method, params in calls]
        replies = self.call("batch", {"requests": requests})["replies"]
        return [_batch_reply(reply) for reply in replies]


def _many(clients: Clients) -> List[str]:
    # A lone string is one client, not a sequence of one-letter clients.
    return [clients] if isinstance(clients, str) else list(clients)


def _membership(chan: str, clients: Clients) -> Dict[str, Any]:
    if isinstance(clients, str):
        return {"chan": chan, "client": clients}
    return {"chan": chan, "clients": list(clients)}


def _retry_after(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _batch_reply(reply: Mapping[str, Any]) -> BatchReply:
    status = int(reply.get("status", 0))
    if status == 200:
        return BatchReply(status, result=reply.get("result"))
    return BatchReply(status, error=ApiError.from_body(status, reply))
