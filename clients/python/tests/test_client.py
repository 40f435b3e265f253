"""Every client method against real nodes: what a backend calls, and what its clients' sockets
then see."""

from __future__ import annotations

import time
import uuid
from typing import List

import pytest

from conftest import API_KEY, Node, free_port, wait_for, webhook_supported
from imserver_client import ApiError, Client
from sockets import Socket


def fresh(prefix: str) -> str:
    """A name no other test uses: the nodes and Redis are shared by the session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def online(api: Client, client: str, meta: object = None) -> Socket:
    return Socket(api.connect_url(client, meta)["url"])


def test_connect_url_opens_a_socket_on_the_clients_home_node(api: Client, cluster: List[Node]) -> None:
    alice = fresh("alice")
    answer = api.connect_url(alice, meta={"name": "Alice"})
    assert answer["node"] in [n.id for n in cluster]
    assert answer["url"].startswith(answer["node"] + "/ws?token=")
    assert time.time() < answer["expires_at"] <= time.time() + 120
    socket = Socket(answer["url"])
    assert socket.welcome["client"] == alice
    assert socket.welcome["node"] == answer["node"]
    socket.close()


def test_send_reaches_the_receiver_with_the_given_message_id(api: Client) -> None:
    bob = fresh("bob")
    socket = online(api, bob)
    result = api.send("system", [bob], {"text": "hi"}, message_id="py-send-1")
    assert result["message_id"] == "py-send-1"
    assert result["unreachable"] == []
    assert [(r["receivers"], r["taken"]) for r in result["nodes"]] == [([bob], True)]
    envelope = socket.next_message()
    assert (envelope["type"], envelope["from"], envelope["payload"], envelope["id"]) == (
        "message", "system", {"text": "hi"}, "py-send-1"
    )
    socket.close()


def test_send_with_receipt_pushes_the_sender_a_receipt(api: Client) -> None:
    carol, dave = fresh("carol"), fresh("dave")
    sender, receiver = online(api, carol), online(api, dave)
    api.send(carol, dave, "ping", receipt=True)
    assert receiver.next_message()["payload"] == "ping"
    assert sender.next_message()["type"] == "receipt"
    sender.close()
    receiver.close()


def test_send_chan_reaches_online_members_and_can_leave_the_sender_out(api: Client) -> None:
    room, erin, frank = fresh("room"), fresh("erin"), fresh("frank")
    assert api.join(room, [erin, frank]) == 2
    erin_socket, frank_socket = online(api, erin), online(api, frank)
    result = api.send_chan(erin, room, {"text": "to all"}, exclude_sender=True)
    assert result["nodes"] >= 1
    envelope = frank_socket.next_message()
    assert (envelope["type"], envelope["chan"], envelope["from"]) == ("channel", room, erin)
    # Then a message erin does get: the first, which left her out, never reached her.
    api.send_chan("system", room, "second")
    assert erin_socket.next_message()["payload"] == "second"
    erin_socket.close()
    frank_socket.close()


def test_broadcast_reaches_every_online_client(api: Client) -> None:
    gina = fresh("gina")
    socket = online(api, gina)
    result = api.broadcast("system", {"text": "everyone"})
    assert result["nodes"] >= 1
    envelope = socket.next_message()
    assert (envelope["type"], envelope["payload"]) == ("broadcast", {"text": "everyone"})
    socket.close()


def test_channel_calls_answer_what_the_channel_holds(api: Client) -> None:
    room, hank, ivy = fresh("room"), fresh("hank"), fresh("ivy")
    assert api.join(room, hank) == 1
    assert api.join(room, [ivy]) == 1
    page = api.chan_members(room)
    assert sorted(page["members"]) == sorted([hank, ivy]) and page["cursor"] is None
    assert sorted(api.iter_chan_members(room)) == sorted([hank, ivy])
    assert api.chan_member_count(room) == 2
    assert api.chan_online(room) == 0
    socket = online(api, hank)
    wait_for("hank counted online in the channel", lambda: api.chan_online(room) == 1)
    assert api.client_chans(hank) == [room]
    assert {"chan": room, "members": 2, "online": 1} in api.chans()
    assert api.leave(room, ivy) == 1
    assert api.client_chans(ivy) == []
    assert api.delete_chan(room) == 1
    assert api.chan_member_count(room) == 0
    socket.close()


def test_presence_calls_see_a_client_come_and_be_kicked(api: Client) -> None:
    jack = fresh("jack")
    assert api.has_online(jack) is False
    before = api.online_count()
    socket = online(api, jack)
    # The node writes presence to Redis just after the welcome, not before it.
    wait_for("jack online", lambda: api.has_online(jack))
    assert api.online_count() >= before + 1
    assert jack in api.iter_online(page_size=1)
    page = api.online(limit=1)
    assert len(page["clients"]) == 1
    assert api.kick(jack) is True
    assert socket.close_code() == 4002
    wait_for("the kicked client to be offline", lambda: not api.has_online(jack))


def test_nodes_lists_the_live_nodes(api: Client, cluster: List[Node]) -> None:
    assert sorted(api.nodes()) == sorted(n.id for n in cluster)


def test_refusals_carry_status_code_and_field(api: Client) -> None:
    with pytest.raises(ApiError) as refused:
        api.send("system", ["ok", ""], "hi")
    assert (refused.value.status, refused.value.code, refused.value.field) == (
        400, "invalid_client_id", "receivers[1]"
    )
    assert not refused.value.retryable
    with pytest.raises(ApiError) as unknown:
        api.call("no_such_method")
    assert (unknown.value.status, unknown.value.code) == (404, "not_found")


def test_a_wrong_key_is_refused_with_401(api: Client) -> None:
    with pytest.raises(ApiError) as refused:
        Client(api.base_url, "not-the-key-0123456789").online_count()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


def test_no_answer_is_an_error_without_status_that_may_be_retried() -> None:
    with pytest.raises(ApiError) as failed:
        Client(f"127.0.0.1:{free_port()}", API_KEY, timeout=2).online_count()
    assert failed.value.status is None and failed.value.retryable


def test_a_spent_rate_says_when_to_retry(redis: object) -> None:
    from conftest import start_node

    node = start_node(redis, "--api-rate", "1", "--api-burst", "1")  # type: ignore[arg-type]
    try:
        limited = Client(node.api_url, API_KEY)
        limited.online_count()
        with pytest.raises(ApiError) as refused:
            limited.online_count()
        assert (refused.value.status, refused.value.code) == (429, "rate_limited")
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        assert refused.value.retryable
    finally:
        node.stop()


def test_a_batch_answers_each_item_and_a_bad_one_stops_nothing(api: Client) -> None:
    kim, room = fresh("kim"), fresh("room")
    socket = online(api, kim)
    replies = api.batch([
        ("send", {"sender": "system", "receivers": [kim], "payload": "one"}),
        ("send", {"sender": "system", "receivers": [""], "payload": "two"}),
        ("join", {"chan": room, "clients": [kim]}),
    ])
    assert [r.ok for r in replies] == [True, False, True]
    assert replies[1].error is not None
    assert (replies[1].error.status, replies[1].error.code, replies[1].error.field) == (
        400, "invalid_client_id", "receivers[0]"
    )
    assert replies[2].result == {"chan": room, "clients": 1}
    assert socket.next_message()["payload"] == "one"
    assert api.client_chans(kim) == [room]
    socket.close()


@pytest.mark.skipif(not webhook_supported(), reason="this imserver has no --webhook-url, so no events route yet (it lands with the webhooks work)")
def test_events_pull_a_clients_online_and_offline(api: Client) -> None:
    start = api.events(None, wait_ms=0)
    lea = fresh("lea")
    seen: list = []
    after = start["last_id"]

    def kinds(want: list) -> object:
        nonlocal after
        page = api.events(after, wait_ms=1000)
        after = page["last_id"]
        seen.extend(e for e in page["events"] if e["client"] == lea)
        return [e["kind"] for e in seen] == want or None

    # The node writes presence behind the sockets and coalesces: a socket closed before its
    # online event was written leaves no event at all. So close only once it is online.
    socket = online(api, lea, meta={"name": "Lea"})
    wait_for("lea's online event", lambda: kinds(["online"]))
    socket.close()
    wait_for("lea's offline event", lambda: kinds(["online", "offline"]))
    assert seen[0]["meta"] == {"name": "Lea"}


def test_a_send_retried_with_its_message_id_carries_the_same_id(api: Client) -> None:
    # The node pushes each attempt; the client shows the message once by de-duplicating on
    # the envelope id (docs/PROTOCOL.md), which is what the retry's own id makes possible.
    from imserver_client import new_message_id

    lou = fresh("lou")
    socket = online(api, lou)
    msg_id = new_message_id()
    assert len(msg_id) == 32 and msg_id[12] == "7"
    first = api.send("system", lou, "once", message_id=msg_id)
    again = api.send("system", lou, "once", message_id=msg_id)
    assert first["message_id"] == again["message_id"] == msg_id
    ids = [socket.next_message()["id"] for _ in range(2)]
    assert ids == [msg_id, msg_id]
    socket.close()


def test_the_api_of_one_node_reaches_a_client_homed_on_the_other(api: Client, cluster: List[Node]) -> None:
    other = cluster[1].id
    # Names are spread over the nodes by hashing; a few tries find one homed on the other.
    homed = next(
        (name, answer)
        for name, answer in ((n, api.connect_url(n)) for n in (fresh("far") for _ in range(64)))
        if answer["node"] == other
    )
    socket = Socket(homed[1]["url"])
    result = api.send("system", homed[0], "across")
    assert [(r["node"], r["taken"]) for r in result["nodes"]] == [(other, True)]
    assert socket.next_message()["payload"] == "across"
    socket.close()
