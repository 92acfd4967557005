"""The client without a real node: error mapping, result parsing, requests as sent."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator, List, Tuple

import numpy as np
import pytest

import fhenode
from fhenode import errors, safetensors
from fhenode.client import Node, _spec


@pytest.mark.parametrize(
    "status, code, cls",
    [
        (400, "bad_input", fhenode.BadInput),
        (400, "bad_json", fhenode.BadInput),
        (400, "bad_request", fhenode.BadInput),
        (415, "unsupported_format", fhenode.UnsupportedFormat),
        (415, "unsupported_media_type", fhenode.UnsupportedFormat),
        (404, "unknown_session", fhenode.UnknownSession),
        (409, "duplicate", fhenode.Conflict),
        (409, "wrong_phase", fhenode.Conflict),
        (409, "no_result", fhenode.Conflict),
        (403, "not_allowed", fhenode.NotAllowed),
        (401, "unauthorized", fhenode.Unauthorized),
        (503, "unavailable", fhenode.Unavailable),
        (400, "invalid_spec", fhenode.InvalidSpec),
        (404, "not_found", fhenode.NotFound),
        (409, "some_new_conflict", fhenode.Conflict),  # unknown code: by status
        (502, "remote", fhenode.FhenodeError),  # neither: the generic error
    ],
)
def test_error_bodies_map_to_typed_errors(status, code, cls):
    body = json.dumps({"error": {"code": code, "message": "it went wrong"}}).encode()
    err = errors.error_from_response(status, body)
    assert type(err) is cls
    assert (err.code, err.status, err.message) == (code, status, "it went wrong")
    assert isinstance(err, fhenode.FhenodeError)
    assert "it went wrong" in str(err) and code in str(err)


def test_a_body_that_is_not_the_nodes_json_keeps_its_text():
    err = errors.error_from_response(502, b"<html>Bad Gateway</html>")
    assert type(err) is fhenode.FhenodeError
    assert (err.code, err.status, err.message) == ("http_502", 502, "<html>Bad Gateway</html>")
    assert isinstance(errors.error_from_response(404, b""), fhenode.NotFound)


def test_unknown_session_is_a_not_found():
    assert issubclass(fhenode.UnknownSession, fhenode.NotFound)


def test_result_from_safetensors_reads_tensors_and_metadata():
    data = safetensors.dumps(
        {"w": np.arange(6.0).reshape(2, 3), "b": np.array(0.5)},
        metadata={
            "session": "s1",
            "kind": "weighted_mean",
            "contributors": "3",
            "clipped": "1",
            "error_bound": "9.5367431640625e-7",
            "total_weight": "100",
        },
    )
    result = fhenode.Result.from_body("application/safetensors", data)
    assert (result.session, result.kind, result.contributors, result.clipped) == (
        "s1",
        "weighted_mean",
        3,
        1,
    )
    assert result.error_bound == 9.5367431640625e-7 and result.total_weight == 100
    assert result.tensors["w"].shape == (2, 3) and result.tensors["b"].shape == ()
    np.testing.assert_array_equal(result.values, [0.5, 0, 1, 2, 3, 4, 5])  # "b" < "w"


def test_result_from_json_is_one_flat_tensor():
    body = {"session": "s", "kind": "mean", "contributors": 2, "contributor_ids": ["a", "b"],
            "clipped": 0, "error_bound": 1e-6, "values": [1.5, 2.5]}
    result = fhenode.Result.from_body("application/json", json.dumps(body).encode())
    assert result.total_weight is None and result.contributors == 2
    np.testing.assert_array_equal(result.values, [1.5, 2.5])
    with pytest.raises(fhenode.FhenodeError):
        fhenode.Result.from_body("text/plain", b"1.5")


def test_shapes_and_specs():
    tensors = {"a": np.zeros((3, 4)), "s": np.float32(1), "l": [[1, 2, 3]]}
    assert fhenode.shapes_of(tensors) == {"a": (3, 4), "s": (), "l": (1, 3)}
    spec = _spec(committee=["x"], participants=["y"], shapes={"a": (3, 4), "b": np.zeros(2)},
                 threshold=None, result="mean")
    assert spec == {"committee": ["x"], "participants": ["y"],
                    "shapes": {"a": [3, 4], "b": [2]}, "result": "mean"}


def test_a_closed_port_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(fhenode.Unreachable):
        Node(f"http://127.0.0.1:{port}", timeout=5).status()


Seen = List[Tuple[str, str, dict, bytes]]


@pytest.fixture
def fake_node() -> Iterator[Tuple[Node, Seen]]:
    """A node that records each request and answers 200 `{}`, or an error for /fail."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
            status, body = 200, b"{}"
            if self.path.startswith("/fail"):
                status = 503
                body = b'{"error":{"code":"unavailable","message":"seeds not delivered"}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Node(f"http://127.0.0.1:{server.server_address[1]}/", token="t" * 16), seen
    finally:
        server.shutdown()
        server.server_close()


def test_requests_carry_the_token_and_the_right_body(fake_node):
    node, seen = fake_node
    node.submit("s-1", {"w": np.ones(2, np.float16)}, weight=20)
    node.submit("s-1", np.arange(3, dtype=np.float64), weight=0.25)
    node.session("s-1", wait=2.5)
    (_, path1, headers1, body1), (_, path2, headers2, body2), (_, path3, _, _) = seen
    assert path1 == "/v1/sessions/s-1/update?weight=20"
    assert headers1["Authorization"] == "Bearer " + "t" * 16
    assert headers1["Content-Type"] == "application/safetensors"
    tensors, _ = safetensors.loads(body1)
    assert tensors["w"].dtype == np.float16
    assert path2 == "/v1/sessions/s-1/update?weight=0.25"
    assert headers2["Content-Type"] == "application/octet-stream"
    np.testing.assert_array_equal(np.frombuffer(body2, "<f4"), [0, 1, 2])
    assert path3 == "/v1/sessions/s-1?wait=3"


def test_error_answers_raise(fake_node):
    node, _ = fake_node
    with pytest.raises(fhenode.Unavailable) as info:
        node._request("GET", "/fail")
    assert (info.value.status, info.value.code) == (503, "unavailable")
    assert info.value.message == "seeds not delivered"
