"""The HTTP client of one fhenode node.

Each participant talks to its own node: it submits its update there, and the node encrypts
it before anything leaves the machine. Any node that took part can give the result.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from . import safetensors
from .arrays import as_shapes, flat_float32
from .errors import (
    Conflict,
    FhenodeError,
    SessionFailed,
    Timeout,
    UnknownSession,
    Unreachable,
    error_from_response,
)
from .result import Result

JSON = "application/json"
SAFETENSORS = "application/safetensors"
OCTET_STREAM = "application/octet-stream"

#: Phases in which a session still takes submissions (after seeds are delivered).
OPEN_PHASES = ("proposed", "collecting")


@dataclass
class Response:
    """An HTTP answer with a 2xx status."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def _number(value: float) -> str:
    """A number for a query string: integral values without a fraction part."""
    if isinstance(value, bool):
        raise TypeError("a weight must be a number, not a bool")
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _seconds(value: float) -> int:
    """A long poll's ``?wait=``: whole seconds, 1 to 60 (the node's cap)."""
    return max(1, min(60, math.ceil(value)))


class Node:
    """A client of one node's HTTP API (``/v1``).

    ``timeout`` bounds each request, in seconds (long polls get their wait on top).
    """

    #: Longest single long poll while waiting on a phase; the wait loops until its deadline.
    poll_secs: float = 10.0
    #: Pause between polls while waiting for seeds (their count does not end a long poll).
    seed_poll_secs: float = 0.1

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._peer_id: Optional[str] = None

    def __repr__(self) -> str:
        return f"Node({self.url!r})"

    # -- plumbing -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, str]] = None,
        body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        accept: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """Sends one request; raises the typed :class:`FhenodeError` for an error answer."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, data=body, method=method)
        if content_type is not None:
            request.add_header("Content-Type", content_type)
        if accept is not None:
            request.add_header("Accept", accept)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                return Response(
                    answer.status, answer.headers.get("Content-Type", ""), answer.read()
                )
        except urllib.error.HTTPError as e:
            try:
                raise error_from_response(e.code, e.read()) from None
            finally:
                e.close()
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            reason = getattr(e, "reason", e)
            raise Unreachable(f"{method} {url}: {reason}", code="unreachable") from None

    def _json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        query: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """A request with an optional JSON body, answered with a JSON object."""
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        answer = self._request(
            method,
            path,
            query=query,
            body=body,
            content_type=JSON if body is not None else None,
            accept=JSON,
            timeout=timeout,
        )
        return _object(answer)

    @staticmethod
    def _session_path(id: str, *rest: str) -> str:
        return "/".join(["/v1/sessions", urllib.parse.quote(id, safe=""), *rest])

    # -- the node -------------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        """The node's status: ``peer_id``, ``listen_addrs``, ``connected_peers``, ..."""
        return self._json("GET", "/v1/status")

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer id (asked once, then remembered: it never changes)."""
        if self._peer_id is None:
            self._peer_id = str(self.status()["peer_id"])
        return self._peer_id

    def peers(self) -> List[Dict[str, Any]]:
        """The peers this node is connected to, each with its ``peer_id`` and ``protocols``."""
        return list(self._json("GET", "/v1/peers")["peers"])

    # -- sessions -------------------------------------------------------------------------

    def sessions(self) -> List[Dict[str, Any]]:
        """Every session this node knows."""
        return list(self._json("GET", "/v1/sessions")["sessions"])

    def create_session(
        self,
        *,
        committee: List[str],
        participants: List[str],
        shapes: Optional[Mapping[str, Any]] = None,
        length: Optional[int] = None,
        id: Optional[str] = None,
        threshold: Optional[int] = None,
        min_participants: Optional[int] = None,
        clip: Optional[float] = None,
        frac_bits: Optional[int] = None,
        result: str = "mean",
        max_weight: Optional[float] = None,
        deadline_secs: Optional[int] = None,
        profile: Optional[str] = None,
        integers: Optional[Any] = None,
    ) -> Dict[str, Any]:
        """Creates a session that this node coordinates; returns its info.

        ``shapes`` maps tensor names to shapes (tuples of ints) or to arrays, whose shapes are
        taken (see :func:`fhenode.shapes_of`); give it or ``length`` (a flat update's size).
        ``integers="include"`` lets integer tensors (e.g. batch-norm counters) be aggregated
        as floats; by default the node refuses them by name. ``result`` is ``"mean"``,
        ``"sum"`` or ``"weighted_mean"`` (with ``max_weight``). Fields left ``None`` take
        the node's defaults.
        """
        spec = _spec(
            id=id,
            committee=list(committee),
            participants=list(participants),
            shapes=shapes,
            length=length,
            threshold=threshold,
            min_participants=min_participants,
            clip=clip,
            frac_bits=frac_bits,
            result=result,
            max_weight=max_weight,
            deadline_secs=deadline_secs,
            profile=profile,
            integers=integers,
        )
        return self._json("POST", "/v1/sessions", spec)

    def session(
        self, id: str, wait: Optional[float] = None, seen: Optional[str] = None
    ) -> Dict[str, Any]:
        """The session's state. With ``wait`` (seconds, the node caps it at 60) the node
        answers as soon as the session is in another phase than ``seen`` (the phase the
        caller last saw; default: the present one), or when the wait is over (a long poll)."""
        if wait is None:
            return self._json("GET", self._session_path(id))
        secs = _seconds(wait)
        query = {"wait": str(secs)}
        if seen is not None:
            query["seen"] = seen
        return self._json(
            "GET",
            self._session_path(id),
            query=query,
            timeout=self.timeout + secs,
        )

    def _session_soon(self, id: str, deadline: float) -> Dict[str, Any]:
        """The session's state, waiting for its plan to reach this node: a participant's node
        learns of a session a moment after its coordinator creates it."""
        while True:
            try:
                return self.session(id)
            except UnknownSession:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(self.seed_poll_secs)

    def wait_ready(self, id: str, timeout: float = 60.0) -> Dict[str, Any]:
        """Waits until this participant may submit: the session is collecting and at least
        ``threshold`` committee members hold its seeds (the node refuses a submission before,
        as ``unavailable``). Returns the session's state then."""
        deadline = time.monotonic() + timeout
        info = self._session_soon(id, deadline)
        while True:
            phase = info["phase"]
            if phase == "collecting" and info["seeds_delivered"] >= info["threshold"]:
                return info
            _check_not_over(id, info, "ready to submit")
            if phase not in OPEN_PHASES:
                raise Conflict(
                    f"session {id!r} is {phase}: too late to submit", code="wrong_phase"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(
                    f"session {id!r} not ready to submit after {timeout:g} s: {phase}, "
                    f"seeds with {info['seeds_delivered']} of {info['threshold']} members",
                    code="timeout",
                )
            if phase == "proposed":
                info = self.session(id, wait=min(left, self.poll_secs), seen=phase)
            else:
                time.sleep(min(left, self.seed_poll_secs))
                info = self.session(id)

    def wait_done(self, id: str, timeout: float = 300.0) -> Dict[str, Any]:
        """Follows the session with long polls until it is ``done`` (returns its state) or
        ``failed`` (raises :class:`SessionFailed`); raises :class:`Timeout` at the deadline."""
        deadline = time.monotonic() + timeout
        info = self._session_soon(id, deadline)
        while info["phase"] != "done":
            _check_not_over(id, info, "done")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(
                    f"session {id!r} not done after {timeout:g} s: {info['phase']}",
                    code="timeout",
                )
            info = self.session(id, wait=min(left, self.poll_secs), seen=info["phase"])
        return info

    def submit(
        self,
        id: str,
        tensors: Any,
        weight: Optional[float] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Submits this node's update; returns the receipt.

        ``tensors`` is a dict of named arrays (numpy, torch, lists, scalars), sent as
        safetensors with each array's own dtype, or one array, sent flat as float32.
        ``weight`` is this update's weight in a weighted session.
        """
        if isinstance(tensors, Mapping):
            body, content_type = safetensors.dumps(tensors), SAFETENSORS
        else:
            body, content_type = flat_float32(tensors).tobytes(), OCTET_STREAM
        query = None if weight is None else {"weight": _number(weight)}
        answer = self._request(
            "POST",
            self._session_path(id, "update"),
            query=query,
            body=body,
            content_type=content_type,
            accept=JSON,
            timeout=timeout,
        )
        return _object(answer)

    def result(
        self, id: str, wait: Optional[float] = None, timeout: Optional[float] = None
    ) -> Result:
        """The session's result. With ``wait`` (seconds), first waits for the session to be
        done (see :meth:`wait_done`); ``timeout`` bounds the download itself."""
        if wait is not None:
            self.wait_done(id, wait)
        answer = self._request(
            "GET",
            self._session_path(id, "result"),
            accept=f"{SAFETENSORS}, {JSON};q=0.5",
            timeout=timeout,
        )
        return Result.from_body(answer.content_type, answer.body)

    # -- series ---------------------------------------------------------------------------

    def create_series(self, **spec: Any) -> Dict[str, Any]:
        """Creates a series of sessions run one after another: the session fields (as for
        :meth:`create_session`) plus ``rounds``. Returns ``{"id", "rounds": [...]}``."""
        if spec.get("shapes") is not None:
            spec["shapes"] = _shapes_json(spec["shapes"])
        payload = {k: v for k, v in spec.items() if v is not None}
        return self._json("POST", "/v1/series", payload)

    def series(self, id: str) -> Dict[str, Any]:
        """A series (on its coordinator's node): ``planned_rounds``, ``finished``,
        ``failure`` and the rounds opened so far, each with its ``round``, ``session``,
        ``phase``, ``submissions`` and ``failure``."""
        return self._json("GET", "/v1/series/" + urllib.parse.quote(id, safe=""))

    @staticmethod
    def round_session(series: str, round: int) -> str:
        """The session id of round ``round`` (from 1) of series ``series``: any participant
        can name it without asking the coordinator."""
        return f"{series}-{round}"


def _object(answer: Response) -> Dict[str, Any]:
    """The JSON object an answer holds."""
    try:
        value = answer.json()
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise FhenodeError(f"expected a JSON object, got {answer.body[:200]!r}", code="bad_answer")
    return value


def _shapes_json(shapes: Mapping[str, Any]) -> Dict[str, List[int]]:
    return {name: list(dims) for name, dims in as_shapes(shapes).items()}


def _spec(**fields: Any) -> Dict[str, Any]:
    """A session spec as JSON: ``None`` fields left out, shapes as lists."""
    if fields.get("shapes") is not None:
        fields["shapes"] = _shapes_json(fields["shapes"])
    return {k: v for k, v in fields.items() if v is not None}


def _check_not_over(id: str, info: Mapping[str, Any], waiting_for: str) -> None:
    if info["phase"] == "failed":
        reason = info.get("failure") or "no reason given"
        raise SessionFailed(f"session {id!r} failed before {waiting_for}: {reason}", dict(info))

