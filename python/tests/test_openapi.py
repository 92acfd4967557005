"""The client matches the OpenAPI document a real node serves (``GET /v1/openapi.json``).

``CLIENT_ROUTES`` lists every (method, path template) ``fhenode.Node`` uses; each must be in
the served document. A second test runs every public request method of the client against a
recorder instead of a node, so that the list cannot fall behind the client: each request it
makes must match a listed route, with only documented query parameters and a documented
request and answer media type.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pytest

from fhenode import Node
from fhenode.client import Response

#: Every route the client uses: (method, path template as the document writes it) → the
#: ``Node`` methods that call it.
CLIENT_ROUTES: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("GET", "/v1/status"): ("status", "peer_id"),
    ("GET", "/v1/peers"): ("peers",),
    ("GET", "/v1/sessions"): ("sessions",),
    ("POST", "/v1/sessions"): ("create_session",),
    ("GET", "/v1/sessions/{id}"): ("session", "wait_ready", "wait_done"),
    ("POST", "/v1/sessions/{id}/update"): ("submit",),
    ("GET", "/v1/sessions/{id}/result"): ("result",),
    ("POST", "/v1/series"): ("create_series",),
    ("GET", "/v1/series/{id}"): ("series",),
}


@pytest.fixture(scope="module")
def document(cluster: List[Node]) -> Dict[str, Any]:
    """The OpenAPI document node 0 serves."""
    return cluster[0]._json("GET", "/v1/openapi.json")


def operation(document: Mapping[str, Any], method: str, template: str) -> Dict[str, Any]:
    item = document["paths"].get(template)
    assert item is not None, f"{template} is not in the served OpenAPI document"
    op = item.get(method.lower())
    assert op is not None, f"{method} {template} is not in the served OpenAPI document"
    return op


def test_the_served_document_is_openapi_3(document: Dict[str, Any]) -> None:
    assert str(document["openapi"]).startswith("3."), document["openapi"]
    ids = [
        op.get("operationId")
        for item in document["paths"].values()
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    ]
    assert all(ids), "an operation has no operationId"
    assert len(ids) == len(set(ids)), f"operationIds repeat: {sorted(ids)}"
    error = document["components"]["schemas"]["ApiError"]
    assert error["properties"]["error"]["required"] == ["code", "message"]


@pytest.mark.parametrize("method,template", sorted(CLIENT_ROUTES))
def test_every_client_route_is_in_the_document(
    document: Dict[str, Any], method: str, template: str
) -> None:
    assert operation(document, method, template)["operationId"]
    for name in CLIENT_ROUTES[(method, template)]:
        assert hasattr(Node, name), f"Node.{name} is gone: update CLIENT_ROUTES"


class Recorder(Node):
    """A client whose requests are recorded and answered with canned bodies, not sent."""

    def __init__(self) -> None:
        super().__init__("http://recorder.invalid")
        self._peer_id = "12D3KooWRecorder"
        self.requests: List[Dict[str, Any]] = []
        self.phase = "done"  # the phase canned sessions are in

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
        self.requests.append(
            dict(method=method, path=path, query=dict(query or {}), content_type=content_type,
                 accept=accept)
        )  # fmt: skip
        if path.endswith("/result"):
            result = {
                "session": "s", "kind": "mean", "contributors": 1, "contributor_ids": [],
                "clipped": 0, "error_bound": 0.0, "total_weight": None, "values": [1.0],
            }  # fmt: skip
            return Response(200, "application/json", json.dumps(result).encode())
        info = {
            "id": "s", "phase": self.phase, "threshold": 1, "seeds_delivered": 1,
            "peers": [], "sessions": [], "peer_id": self._peer_id,
        }  # fmt: skip
        return Response(200, "application/json", json.dumps(info).encode())


def exercise(node: Recorder) -> None:
    """Every public request of the client, once (twice where it sends more than one form)."""
    node.status()
    node.peers()
    node.sessions()
    node.create_session(committee=["a"], participants=["a"], length=2, result="sum")
    node.session("s/1")
    node.session("s", wait=5, seen="collecting")
    node.phase = "collecting"
    node.wait_ready("s", timeout=1)
    node.phase = "done"
    node.wait_done("s", timeout=1)
    node.submit("s", [1.0, 2.0])
    node.submit("s", {"w": np.zeros((2,), dtype=np.float32)}, weight=3)
    node.result("s")
    node.create_series(rounds=2, committee=["a"], participants=["a"], length=2)
    node.series("r")


def template_of(document: Mapping[str, Any], path: str) -> Optional[str]:
    """The document's path template that a concrete request path matches."""
    for template in document["paths"]:
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return template
    return None


def media_types(content: Optional[Mapping[str, Any]]) -> List[str]:
    return [m.split(";")[0].strip() for m in (content or {})]


def test_every_client_request_matches_the_document(document: Dict[str, Any]) -> None:
    node = Recorder()
    exercise(node)
    used = set()
    for request in node.requests:
        method, path = request["method"], request["path"]
        template = template_of(document, path)
        assert template is not None, f"{method} {path} matches no path of the document"
        assert (method, template) in CLIENT_ROUTES, f"{method} {template}: add it to CLIENT_ROUTES"
        used.add((method, template))
        op = operation(document, method, template)
        documented = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        assert set(request["query"]) <= documented, (
            f"{method} {template}: query {sorted(request['query'])} not all documented "
            f"({sorted(documented)})"
        )
        if request["content_type"] is not None:
            accepted = media_types(op.get("requestBody", {}).get("content"))
            assert request["content_type"] in accepted, (
                f"{method} {template} sends {request['content_type']}; the document reads "
                f"{accepted}"
            )
        if request["accept"] is not None:
            answered = {
                m for status, r in op["responses"].items() if status.startswith("2")
                for m in media_types(r.get("content"))
            }  # fmt: skip
            wanted = [m.split(";")[0].strip() for m in request["accept"].split(",")]
            assert set(wanted) & answered, (
                f"{method} {template} accepts {wanted}; the document answers {sorted(answered)}"
            )
    assert used == set(CLIENT_ROUTES), f"listed but never requested: {set(CLIENT_ROUTES) - used}"
