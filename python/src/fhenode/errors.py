"""Typed errors for the node's answers.

The node answers every error as JSON ``{"error": {"code": ..., "message": ...}}`` with an
HTTP status. :func:`error_from_response` turns such an answer into the subclass of
:class:`FhenodeError` that its code names, so callers can catch what they can handle.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Type


class FhenodeError(Exception):
    """Any error from the node or from talking to it.

    ``code`` is the node's stable machine-readable code (or one made up here for errors seen
    on the client side), ``status`` the HTTP status (``None`` when there was no answer) and
    ``message`` the text for humans.
    """

    def __init__(self, message: str, *, code: str = "error", status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"


class BadInput(FhenodeError):
    """The request's content was refused: a bad update, bad JSON, a bad weight (400)."""


class UnsupportedFormat(FhenodeError):
    """The body's Content-Type or encoding is not one the node takes (415)."""


class InvalidSpec(FhenodeError):
    """A session or series specification was refused."""


class NotFound(FhenodeError):
    """No such route or resource (404)."""


class UnknownSession(NotFound):
    """The node knows no session by that id."""


class Conflict(FhenodeError):
    """The session is not in a phase that allows the request, or it was done already (409)."""


class NotAllowed(FhenodeError):
    """This node has no role in the session that allows the request (403)."""


class Unauthorized(FhenodeError):
    """A missing or wrong API token (401)."""


class Unavailable(FhenodeError):
    """The node cannot serve the request now; it may later (503), e.g. a submission before the
    committee holds this participant's seeds."""


class Unreachable(FhenodeError):
    """No answer: the connection failed or timed out."""


class Timeout(FhenodeError):
    """A client-side wait ran out before the session reached the phase waited for."""


class SessionFailed(FhenodeError):
    """The session waited on ended in ``failed``; ``session`` is its last state."""

    def __init__(self, message: str, session: Dict[str, object]):
        super().__init__(message, code="failed")
        self.session = session


_BY_CODE: Dict[str, Type[FhenodeError]] = {
    "bad_input": BadInput,
    "bad_json": BadInput,
    "bad_request": BadInput,
    "payload_too_large": BadInput,
    "unsupported_format": UnsupportedFormat,
    "unsupported_media_type": UnsupportedFormat,
    "invalid_spec": InvalidSpec,
    "not_found": NotFound,
    "unknown_session": UnknownSession,
    "unknown_series": NotFound,
    "duplicate": Conflict,
    "wrong_phase": Conflict,
    "no_result": Conflict,
    "not_allowed": NotAllowed,
    "unauthorized": Unauthorized,
    "unavailable": Unavailable,
}

# For codes this client does not know yet: the class that fits the status.
_BY_STATUS: Dict[int, Type[FhenodeError]] = {
    400: BadInput,
    401: Unauthorized,
    403: NotAllowed,
    404: NotFound,
    409: Conflict,
    413: BadInput,
    415: UnsupportedFormat,
    503: Unavailable,
}


def error_for(status: Optional[int], code: str, message: str) -> FhenodeError:
    """The typed error for a code, else for the status, else a plain :class:`FhenodeError`."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status or 0, FhenodeError)
    return cls(message, code=code, status=status)


def error_from_response(status: int, body: bytes) -> FhenodeError:
    """The error an HTTP error answer stands for; bodies that are not the node's JSON shape
    (a proxy's page, say) keep their text as the message."""
    try:
        err = json.loads(body.decode("utf-8"))["error"]
        return error_for(status, str(err["code"]), str(err.get("message", "")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        text = body[:500].decode("utf-8", "replace").strip() or "no message"
        return error_for(status, f"http_{status}", text)
