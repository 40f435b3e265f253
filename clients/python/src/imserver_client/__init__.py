"""A thin typed client for imserver's HTTP API (docs/API.md): one method per API method,
refusals as :class:`ApiError`, and :func:`verify_webhook` for the node's presence webhooks.

    >>> from imserver_client import Client
    >>> api = Client("http://10.0.0.5:7001", api_key="...")
    >>> api.send("system", ["alice"], {"text": "hi"})  # doctest: +SKIP
"""

from .client import BatchReply, Client
from .errors import ApiError
from .message_id import new_message_id
from .types import (
    ChanInfo,
    ChanMembersPage,
    ConnectUrl,
    EventsPage,
    FanOutResult,
    NodeReport,
    OnlinePage,
    PresenceEvent,
    SendResult,
)
from .webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError",
    "BatchReply",
    "ChanInfo",
    "ChanMembersPage",
    "Client",
    "ConnectUrl",
    "EventsPage",
    "FanOutResult",
    "NodeReport",
    "OnlinePage",
    "PresenceEvent",
    "SendResult",
    "WebhookVerificationError",
    "new_message_id",
    "verify_webhook",
]
