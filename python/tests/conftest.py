"""Three real ``fhenode run`` processes on loopback, shared by the tests that need nodes.

The binary is ``$FHENODE_BIN``, else ``target/release/fhenode``, else ``target/debug/fhenode``
in the repository; the tests that need nodes are skipped when there is none. Each node's log
is kept in pytest's temporary directory, and its path is shown with any failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import pytest

from fhenode import FhenodeError, Node

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")

# Log files of the running cluster, shown with failing tests' reports.
_LOGS: List[Path] = []


def fhenode_binary() -> Optional[Path]:
    """The node binary to test, or None when there is none."""
    named = os.environ.get("FHENODE_BIN")
    if named:
        return Path(named) if Path(named).is_file() else None
    for build in ("release", "debug"):
        path = REPO / "target" / build / "fhenode"
        if path.is_file():
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    process: subprocess.Popen
    node: Node
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_TIMEOUT."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


def start(
    binary: Path, data_dir: Path, bootstrap: Optional[str] = None, port: Optional[int] = None
) -> Daemon:
    port = port or free_port()
    args = [
        str(binary), "run",
        "--config", str(REPO / "config" / "fhenode.toml"),
        "--data-dir", str(data_dir),
        "--api-listen", f"127.0.0.1:{port}",
        "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ]  # fmt: skip
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    log = data_dir.with_suffix(".log")
    env = {**os.environ, "FHENODE__LOG__LEVEL": "info", "NO_COLOR": "1"}  # plain-text logs
    with open(log, "ab") as stderr:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    _LOGS.append(log)
    return Daemon(process, Node(f"http://127.0.0.1:{port}", timeout=10.0), log)


def wait_for(what: str, daemons: List[Daemon], check: Callable[[], Optional[T]]) -> T:
    """Polls ``check`` until it returns something other than None; fails after START_TIMEOUT
    or as soon as a node exits, naming the logs to read."""
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        for d in daemons:
            if d.process.poll() is not None:
                raise RuntimeError(
                    f"node exited with {d.process.returncode} while waiting for {what}; "
                    f"see {d.log}"
                )
        try:
            value = check()
            if value is not None:
                return value
        except FhenodeError as e:  # not listening yet
            last = e
        time.sleep(0.2)
    logs = ", ".join(str(d.log) for d in daemons)
    raise TimeoutError(f"no {what} within {START_TIMEOUT:g} s (last: {last}); logs: {logs}")


class Cluster(List[Node]):
    """The running nodes, as a list of clients, and what restarts one of them."""

    def __init__(self, binary: Path, root: Path, daemons: List[Daemon], bootstrap: str):
        super().__init__(d.node for d in daemons)
        self.binary, self.root, self.daemons, self.bootstrap = binary, root, daemons, bootstrap

    def wait_connected(self) -> None:
        """Until every node lists every other one with its protocols."""
        ids = [wait_for(f"status of {d.node}", self.daemons, d.node.status)["peer_id"] for d in self.daemons]
        for d, me in zip(self.daemons, ids):
            others = set(ids) - {me}

            def connected(d: Daemon = d, others: set = others) -> Optional[bool]:
                ready = {p["peer_id"] for p in d.node.peers() if p.get("protocols")}
                return True if others <= ready else None

            wait_for(f"peers of {d.node}", self.daemons, connected)

    def restart(self, i: int, kill: bool = True) -> None:
        """Kills node ``i`` (SIGKILL; SIGTERM with ``kill=False``) and starts it again on its
        data and API port, so that ``self[i]`` keeps working; returns once the nodes are
        connected again."""
        old = self.daemons[i]
        if kill:
            old.process.kill()
            old.process.wait(timeout=STOP_TIMEOUT)
        old.stop()
        port = int(old.node.url.rsplit(":", 1)[1])
        bootstrap = None if i == 0 else self.bootstrap
        self.daemons[i] = start(self.binary, self.root / f"node{i}", bootstrap, port)
        self.wait_connected()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three connected nodes; node 0 is the one the others bootstrapped from."""
    binary = fhenode_binary()
    if binary is None:
        pytest.skip(
            "no fhenode binary: build it (cargo build --release) or set FHENODE_BIN "
            f"(looked for $FHENODE_BIN, then {REPO}/target/{{release,debug}}/fhenode)"
        )
    root = tmp_path_factory.mktemp("nodes")
    print(f"fhenode binary {binary}; node data and logs in {root}")
    daemons: List[Daemon] = []
    try:
        first = start(binary, root / "node0")
        daemons.append(first)

        def addresses() -> Optional[dict]:
            status = first.node.status()
            return status if status["listen_addrs"] else None

        status = wait_for("listen address of node 0", daemons, addresses)
        bootstrap = f"{status['listen_addrs'][0]}/p2p/{status['peer_id']}"
        daemons += [start(binary, root / f"node{i}", bootstrap) for i in (1, 2)]
        nodes = Cluster(binary, root, daemons, bootstrap)
        nodes.wait_connected()
        yield nodes
    finally:
        for d in daemons:
            d.stop()
        _LOGS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    """Adds the node logs' paths to the report of a failing test that used the cluster."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and _LOGS and "cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("fhenode node logs", "\n".join(str(p) for p in _LOGS)))
