"""Checking the node's presence webhooks: Standard Webhooks 1.0 signatures
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), with a tolerance on the
timestamp so that a captured request cannot be replayed later."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

#: How far, in seconds, a webhook's timestamp may be from now, either way.
DEFAULT_TOLERANCE_SECS = 300

_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """A webhook that is not from a node holding one of the secrets, or is too old or too
    new to be accepted: answer it 400 (or 401) and do not act on it."""


def verify_webhook(
    secrets: Union[str, Sequence[str]],
    headers: Any,
    body: Union[bytes, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECS,
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """Checks a webhook request and answers its JSON body, e.g.
    ``{"type": "presence", "events": [...]}``.

    ``secrets`` is one ``whsec_<base64>`` secret (the node's ``--webhook-secret``) or several,
    during a rotation: a signature by any of them is accepted. ``headers`` is any mapping of the
    request's headers (a dict, ``http.server``'s ``self.headers``, a framework's), looked up
    without regard to case. ``body`` is the raw body exactly as received: parse it only after
    it is verified. Raises :class:`WebhookVerificationError`.

        >>> payload = verify_webhook("whsec_...", self.headers, raw_body)  # doctest: +SKIP
        >>> for event in payload["events"]:  # doctest: +SKIP
        ...     print(event["kind"], event["client"])
    """
    keys = [_key(s) for s in ([secrets] if isinstance(secrets, str) else secrets)]
    if not keys:
        raise WebhookVerificationError("no webhook secret configured to verify with")
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        sent_at = int(stamp)
    except ValueError:
        raise WebhookVerificationError(
            f"webhook-timestamp {stamp!r} is not unix seconds"
        ) from None
    current = time.time() if now is None else now
    if sent_at < current - tolerance:
        raise WebhookVerificationError(
            "webhook-timestamp is too old: a replay, or this machine's clock is off"
        )
    if sent_at > current + tolerance:
        raise WebhookVerificationError(
            "webhook-timestamp is in the future: this machine's clock or the node's is off"
        )
    raw = body.encode() if isinstance(body, str) else bytes(body)
    signed = f"{msg_id}.{stamp}.".encode() + raw
    expected = [
        base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()) for key in keys
    ]
    for given in signatures.split():
        version, _, signature = given.partition(",")
        if version != "v1":
            continue
        for candidate in expected:
            if hmac.compare_digest(signature.encode(), candidate):
                try:
                    parsed: Dict[str, Any] = json.loads(raw)
                except ValueError:
                    raise WebhookVerificationError("the signed body is not JSON") from None
                return parsed
    raise WebhookVerificationError(
        "no webhook-signature matches any configured secret: not from the node, altered, "
        "or signed with a secret this backend does not hold"
    )


def _key(secret: str) -> bytes:
    encoded = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            "a webhook secret is not whsec_ followed by base64"
        ) from None


def _header(headers: Any, name: str) -> str:
    value: Optional[str] = None
    getter = getattr(headers, "get", None)
    if getter is not None:
        value = getter(name)
    if value is None and isinstance(headers, Mapping):
        lowered: List[str] = [k for k in headers if str(k).lower() == name]
        value = headers[lowered[0]] if lowered else None
    if value is None:
        raise WebhookVerificationError(f"the request has no {name} header: not a webhook")
    return str(value)
