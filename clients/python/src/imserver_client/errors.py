"""The one exception every API call raises: the node's error body, its HTTP status and
`Retry-After`, or no status at all when the node did not answer."""

from __future__ import annotations

from typing import Any, Mapping, Optional


class ApiError(Exception):
    """A call the node refused, failed, or did not answer.

    ``status`` is the HTTP status (``None`` when no answer came: the connection failed or timed
    out), ``code`` the node's stable error code (``invalid_client_id``, ``rate_limited``,
    ``redis_unavailable``, …; ``no_answer`` when there was none), ``message`` what to do about
    it, ``field`` the request field at fault when one is (``receivers[2]``), and
    ``retry_after`` the seconds the node asked to wait (429 and 503).

        >>> try:
        ...     api.send("system", [""], "hi")  # doctest: +SKIP
        ... except ApiError as e:
        ...     print(e.status, e.code, e.field)
        400 invalid_client_id receivers[0]
    """

    def __init__(
        self,
        status: Optional[int],
        code: str,
        message: str,
        field: Optional[str] = None,
        retry_after: Optional[int] = None,
    ) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"{status or 'no answer'} {code}{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later: rate limited, Redis unavailable, or no
        answer. Retry a send with the same ``message_id`` so clients show it once."""
        return self.status in (None, 429, 503)

    @classmethod
    def from_body(
        cls, status: int, body: Any, retry_after: Optional[int] = None
    ) -> "ApiError":
        """The error an error body (``{"error", "message", "field"?}``) describes."""
        if not isinstance(body, Mapping):
            return cls(status, "unexpected_answer", f"the node answered {body!r}", None, retry_after)
        return cls(
            status,
            str(body.get("error", "unknown")),
            str(body.get("message", "")),
            body.get("field"),
            retry_after,
        )
