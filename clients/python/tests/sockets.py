"""A browser's side, for the tests: a real WebSocket client (the `websockets` package) that
opens a connect URL, reads the welcome and then envelopes."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any, Dict, Optional
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

WAIT_SECS = 10.0


class Socket:
    """One connection of a client. ``welcome`` is the node's first frame."""

    def __init__(self, url: str) -> None:
        # Entered as a context manager: websockets warns about connections opened otherwise.
        self._stack = ExitStack()
        self.connection: ClientConnection = self._stack.enter_context(
            connect(url, open_timeout=WAIT_SECS)
        )
        frame = self.read()
        payload = frame.get("payload") or {}
        assert frame.get("type") == "system" and payload.get("event") == "welcome", frame
        self.welcome: Dict[str, Any] = payload
        #: The last `seq` this socket processed, for `since` when it comes back.
        self.seq: int = int(payload["seq"])

    def read(self, timeout: float = WAIT_SECS) -> Dict[str, Any]:
        frame: Dict[str, Any] = json.loads(self.connection.recv(timeout=timeout))
        if "seq" in frame:
            self.seq = int(frame["seq"])
        return frame

    def next_message(self, timeout: float = WAIT_SECS) -> Dict[str, Any]:
        """The next envelope that is not a system frame."""
        while True:
            frame = self.read(timeout)
            if frame.get("type") != "system":
                return frame

    def since(self) -> str:
        """The `since` query parameter to resume from where this socket stopped."""
        return quote(f"{self.welcome['epoch']}:{self.seq}", safe="")

    def close_code(self, timeout: float = WAIT_SECS) -> Optional[int]:
        """Reads until the node closes the socket; answers the close code."""
        try:
            while True:
                self.connection.recv(timeout=timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    def close(self) -> None:
        self._stack.close()


def resume_url(url: str, since: str) -> str:
    return f"{url}&since={since}"
