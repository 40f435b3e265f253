"""Message ids a backend takes once per logical message and keeps for every retry, so clients
show a retried send once: UUIDv7 in hex, like imclient's ``new_message_id``, so they sort in
sending order."""

from __future__ import annotations

import os
import time


def new_message_id() -> str:
    """A fresh UUIDv7 in hex (32 characters): 48 bits of Unix milliseconds, then random.

        >>> msg_id = new_message_id()
        >>> len(msg_id), msg_id[12]
        (32, '7')
    """
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return f"{value:032x}"
