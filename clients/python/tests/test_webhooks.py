"""verify_webhook against the Standard Webhooks reference implementation (the
`standardwebhooks` package): what it signs is accepted, anything altered is not."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook

from imserver_client import WebhookVerificationError, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"python-client-webhook-key-32byte").decode()
NEXT_SECRET = "whsec_" + base64.b64encode(b"the-rotated-in-webhook-key-32byt").decode()
BODY = json.dumps({
    "type": "presence",
    "events": [{"id": "1733350000000-0", "kind": "online", "client": "alice",
                "node": "ws://127.0.0.1:6001", "meta": {"name": "Alice"},
                "at": 1733350000000, "conns": 1}],
})


def signed(secret: str = SECRET, body: str = BODY, at: float = 0, msg_id: str = "msg_1") -> dict:
    """The headers the reference implementation puts on ``body``."""
    stamp = int(at or time.time())
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, tz=timezone.utc), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def test_accepts_what_the_reference_signs_and_answers_the_body() -> None:
    payload = verify_webhook(SECRET, signed(), BODY.encode())
    assert payload["events"][0]["client"] == "alice"
    # The reference accepts it too: the two agree on what a signature is.
    Webhook(SECRET).verify(BODY, signed())


def test_header_names_are_looked_up_without_regard_to_case() -> None:
    headers = {k.title(): v for k, v in signed().items()}
    assert verify_webhook(SECRET, headers, BODY)["type"] == "presence"


def test_any_secret_of_a_rotation_and_any_signature_of_several_will_do() -> None:
    old, new = signed(SECRET), signed(NEXT_SECRET)
    both = dict(old, **{"webhook-signature": f"{old['webhook-signature']} {new['webhook-signature']}"})
    assert verify_webhook(NEXT_SECRET, both, BODY)
    assert verify_webhook([NEXT_SECRET, SECRET], old, BODY)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace("alice", "mallory")),
        lambda h, b: (dict(h, **{"webhook-id": "msg_2"}), b),
        lambda h, b: (dict(h, **{"webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}), b),
        lambda h, b: (dict(h, **{"webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}), b),
        lambda h, b: (dict(h, **{"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}), b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    ],
    ids=["body", "id", "timestamp", "version", "signature", "no-signature"],
)
def test_rejects_anything_altered(tamper) -> None:  # type: ignore[no-untyped-def]
    headers, body = tamper(signed(), BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, body)


def test_rejects_a_signature_by_another_secret() -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, signed(NEXT_SECRET), BODY)


def test_rejects_timestamps_outside_the_tolerance() -> None:
    now = time.time()
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, signed(at=now - 301), BODY, now=now)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify_webhook(SECRET, signed(at=now + 301), BODY, now=now)
    assert verify_webhook(SECRET, signed(at=now - 600), BODY, now=now, tolerance=900)
