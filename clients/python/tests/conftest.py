"""The test bed: a private redis-server on a free port and real imserver nodes with their HTTP
API on, started once per session. The binary is $IMSERVER_BIN, else <repo>/target/debug/imserver;
nothing is built here (scripts/test-python.sh builds it when missing)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, TypeVar

import pytest

from imserver_client import Client

REPO = Path(__file__).resolve().parents[3]
API_KEY = "python-client-test-key-0123456789"
TOKEN_SECRET = "python-client-secret-0123456789abcdef"
PREFIX = "impytest"
WAIT_SECS = 10.0

T = TypeVar("T")


def imserver_bin() -> Path:
    path = Path(os.environ.get("IMSERVER_BIN", REPO / "target" / "debug" / "imserver"))
    if not path.is_file():
        pytest.exit(
            f"no imserver binary at {path}: run scripts/test-python.sh, or cargo build -p "
            "imserver, or set IMSERVER_BIN",
            returncode=2,
        )
    return path


_HANDED_OUT: set = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range (a port from inside it can
    become an outgoing connection's local port before the server picked for it binds it), and
    not handed out before by this process."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        port = random.randrange(10000, low) if low > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(what: str, check: Callable[[], Optional[T]], deadline: float = WAIT_SECS) -> T:
    """Polls ``check`` until it answers something other than None or False."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.02)


class Redis:
    """A redis-server of the session's own, keeping nothing on disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="impytest-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("redis-server to answer", self._ping)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Node:
    """A running imserver process and the addresses of its ready line."""

    process: subprocess.Popen
    id: str
    listen: str
    api: str
    log: List[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.api}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_node(redis: Redis, *args: str, nodes: Optional[List[str]] = None, listen: str = "127.0.0.1:0") -> Node:
    """An imserver node on ``listen`` with its API on a free port, the session's key and
    secret, and ``args`` on top; returns once its ready line is read."""
    command = [
        str(imserver_bin()),
        "--listen", listen,
        "--redis-url", redis.url,
        "--key-prefix", PREFIX,
        "--lease-ms", "1500",
        "--workers", "1",
        "--api-listen", "127.0.0.1:0",
        "--api-key", API_KEY,
    ]
    if nodes:
        command += ["--nodes", ",".join(nodes)]
    env = dict(os.environ, IM_TOKEN_SECRET=TOKEN_SECRET, RUST_LOG=os.environ.get("IM_TEST_LOG", "warn"))
    process = subprocess.Popen(
        command + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=WAIT_SECS)
        raise RuntimeError(f"imserver exited before its ready line: {process.stderr.read()}")
    ready = json.loads(line)
    node = Node(process, ready["node"], ready["listen"], ready["api"])
    # Drained so the node never blocks on a full pipe; kept for a failing test to show.
    threading.Thread(target=lambda: node.log.extend(process.stderr), daemon=True).start()
    return node


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(redis: Redis) -> Iterator[List[Node]]:
    """Two nodes that know each other (``--nodes``), so the API routes clients to both."""
    ports = [free_port(), free_port()]
    ids = [f"ws://127.0.0.1:{p}" for p in ports]
    started = [start_node(redis, nodes=ids, listen=f"127.0.0.1:{p}") for p in ports]
    api = Client(started[0].api_url, API_KEY)
    wait_for("both nodes live", lambda: sorted(api.nodes()) == sorted(ids) or None)
    yield started
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def api(cluster: List[Node]) -> Client:
    return Client(cluster[0].api_url, API_KEY)


def webhook_supported() -> bool:
    """Whether this imserver has webhooks (`--webhook-url`)."""
    out = subprocess.run([str(imserver_bin()), "--help"], capture_output=True, text=True, check=False)
    return "--webhook-url" in out.stdout
