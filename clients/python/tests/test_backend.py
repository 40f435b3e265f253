"""The proof: examples/backend.py, run as a process against real nodes, hands out connect URLs
and sends; a real WebSocket client gets private and channel messages, drops, misses two,
resumes with `since` and gets exactly those, with `recovered: true`. With webhook support in
the node, the backend also records the client's online and offline events."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from conftest import API_KEY, Node, Redis, free_port, start_node, wait_for, webhook_supported
from sockets import Socket, resume_url

BACKEND = Path(__file__).resolve().parents[1] / "examples" / "backend.py"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"example-backend-webhook-secret!!").decode()


class Backend:
    """examples/backend.py as its own process."""

    def __init__(self, api_url: str, listen: str = "127.0.0.1:0") -> None:
        env = dict(os.environ, IMSERVER_API_URL=api_url, IMSERVER_API_KEY=API_KEY,
                   IMSERVER_WEBHOOK_SECRET=WEBHOOK_SECRET, LISTEN=listen)
        self.process = subprocess.Popen([sys.executable, str(BACKEND)], stdout=subprocess.PIPE,
                                        text=True, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "examples/backend.py exited before saying where it listens"
        self.url = "http://" + json.loads(line)["listen"]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: dict) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def connect(self, user: str) -> str:
        return str(self.get(f"/connect?user={user}")["url"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def backend(cluster: List[Node]) -> Iterator[Backend]:
    running = Backend(cluster[0].api_url)
    yield running
    running.stop()


def test_a_client_gets_its_messages_drops_and_resumes_with_what_it_missed(backend: Backend) -> None:
    suffix = uuid.uuid4().hex[:8]
    alice, bob, room = f"alice-{suffix}", f"bob-{suffix}", f"room-{suffix}"

    socket = Socket(backend.connect(alice))
    assert socket.welcome["client"] == alice
    backend.post("/send", {"from": bob, "to": alice, "text": "private"})
    envelope = socket.next_message()
    assert (envelope["type"], envelope["from"], envelope["payload"]) == ("message", bob, {"text": "private"})

    backend.post("/room", {"room": room, "user": alice, "text": "alice joins"})
    envelope = socket.next_message()
    assert (envelope["type"], envelope["chan"], envelope["payload"]) == ("channel", room, {"text": "alice joins"})
    bob_socket = Socket(backend.connect(bob))
    backend.post("/room", {"room": room, "user": bob, "text": "bob joins"})
    assert socket.next_message()["payload"] == {"text": "bob joins"}
    assert bob_socket.next_message()["payload"] == {"text": "bob joins"}

    # Alice drops; two messages go out while she is away.
    since, last_seq = socket.since(), socket.seq
    socket.close()
    backend.post("/send", {"from": bob, "to": alice, "text": "missed private"})
    backend.post("/room", {"room": room, "user": bob, "text": "missed in the room"})
    assert bob_socket.next_message()["payload"] == {"text": "missed in the room"}

    back = Socket(resume_url(backend.connect(alice), since))
    assert back.welcome.get("recovered") is True, back.welcome
    first, second = back.next_message(), back.next_message()
    assert (first["type"], first["payload"]) == ("message", {"text": "missed private"})
    assert (second["type"], second["chan"], second["payload"]) == ("channel", room, {"text": "missed in the room"})
    assert [first["seq"], second["seq"]] == [last_seq + 1, last_seq + 2]
    # And live again.
    backend.post("/send", {"from": bob, "to": alice, "text": "live"})
    assert back.next_message()["payload"] == {"text": "live"}
    back.close()
    bob_socket.close()


@pytest.mark.skipif(not webhook_supported(), reason="this imserver has no --webhook-url (webhooks land in parallel)")
def test_the_backend_records_a_clients_online_and_offline_from_the_webhook() -> None:
    redis = Redis()
    port = free_port()
    node = start_node(redis, "--webhook-url", f"http://127.0.0.1:{port}/webhook",
                      "--webhook-secret", WEBHOOK_SECRET)
    backend = Backend(node.api_url, listen=f"127.0.0.1:{port}")
    try:
        carol = f"carol-{uuid.uuid4().hex[:8]}"
        socket = Socket(backend.connect(carol))

        def kinds(want: List[str]) -> Any:
            events = [e for e in backend.get("/presence") if e["client"] == carol]
            return events if [e["kind"] for e in events] == want else None

        try:
            # The node writes presence behind the sockets and coalesces: a socket closed before
            # its online event was written leaves no event at all. So close once it is online.
            wait_for("carol's online webhook", lambda: kinds(["online"]), deadline=20)
            socket.close()
            online, offline = wait_for(
                "carol's offline webhook", lambda: kinds(["online", "offline"]), deadline=20
            )
        except AssertionError as missing:
            raise AssertionError(
                f"{missing}; the backend recorded {backend.get('/presence')}; the node logged "
                f"{''.join(node.log[-20:])}"
            ) from None
        assert online["meta"] == {"user": carol} and online["node"] == node.id
        assert offline["at"] >= online["at"]
    finally:
        backend.stop()
        node.stop()
        redis.stop()
