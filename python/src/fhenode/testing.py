"""A few ``fhenode run`` processes on loopback, for examples, tests and trying things out.

    from fhenode.testing import LocalCluster

    with LocalCluster(3) as nodes:          # three connected nodes, node 0 the bootstrap
        ids = [n.peer_id for n in nodes]
        ...

Each node gets its own data directory and log file under one temporary folder, which is
removed on a clean exit and kept (its path printed) when the block raised, so the logs can
be read. Nothing here is needed to use fhenode for real: there each node runs on its own
machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Set, Type, TypeVar

from .client import Node
from .errors import FhenodeError

T = TypeVar("T")

#: Where a source checkout keeps its builds, relative to this file (python/src/fhenode/).
_CHECKOUT = Path(__file__).resolve().parents[3]


def find_binary() -> Optional[Path]:
    """The ``fhenode`` binary to run: ``$FHENODE_BIN`` if set (None if it is not a file),
    else ``target/release`` or ``target/debug`` under the current directory or this source
    checkout, else ``fhenode`` on the PATH; None when there is none."""
    named = os.environ.get("FHENODE_BIN")
    if named:
        return Path(named) if Path(named).is_file() else None
    for root in dict.fromkeys([Path.cwd(), _CHECKOUT]):
        for build in ("release", "debug"):
            path = root / "target" / build / "fhenode"
            if path.is_file():
                return path
    found = shutil.which("fhenode")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """``size`` connected ``fhenode run`` processes on 127.0.0.1, mDNS off.

    ``binary`` defaults to :func:`find_binary`; ``config`` is passed as ``--config`` when
    given (otherwise the node's own defaults apply); ``root`` keeps data and logs there
    instead of in a temporary folder (and is never removed). Every wait is bounded by
    ``start_timeout`` seconds.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        binary: Optional[Path] = None,
        config: Optional[Path] = None,
        root: Optional[Path] = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        log_level: str = "info",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        found = binary or find_binary()
        if found is None:
            raise FileNotFoundError(
                "no fhenode binary: build it (cargo build --release) or set FHENODE_BIN"
            )
        self.size = size
        self.binary = Path(found)
        self.config = config
        self.root = root
        self._own_root = root is None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.processes: List["subprocess.Popen[bytes]"] = []
        self.logs: List[Path] = []
        self.nodes: List[Node] = []
        self._bootstrap: Optional[str] = None

    # -- starting ---------------------------------------------------------------------------

    def _spawn(self, index: int, bootstrap: Optional[str], port: Optional[int] = None) -> Node:
        """Starts node ``index`` (a new one, or again on its data and ``port``)."""
        assert self.root is not None
        data = self.root / f"node{index}"
        port = port or _free_port()
        args = [
            str(self.binary), "run",
            "--data-dir", str(data),
            "--api-listen", f"127.0.0.1:{port}",
            "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ]  # fmt: skip
        if self.config is not None:
            args += ["--config", str(self.config)]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        log = data.with_suffix(".log")
        env = {**os.environ, "FHENODE__LOG__LEVEL": self.log_level, "NO_COLOR": "1"}
        with open(log, "ab") as stderr:
            process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=self.root
            )
        node = Node(f"http://127.0.0.1:{port}", timeout=10.0)
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)
            self.logs.append(log)
            self.nodes.append(node)
        return node

    def _wait_for(self, what: str, check: Callable[[], Optional[T]]) -> T:
        """Polls ``check`` until it returns something other than None; raises as soon as a
        node exits, or after ``start_timeout``, naming the logs to read."""
        deadline = time.monotonic() + self.start_timeout
        last: object = None
        while time.monotonic() < deadline:
            for process, log in zip(self.processes, self.logs):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"fhenode exited with {process.returncode} while waiting for "
                        f"{what}; see {log}"
                    )
            try:
                value = check()
                if value is not None:
                    return value
            except FhenodeError as e:  # not listening yet
                last = e
            time.sleep(0.2)
        raise TimeoutError(
            f"no {what} within {self.start_timeout:g} s (last: {last}); logs in {self.root}"
        )

    def start(self) -> List[Node]:
        """Starts the nodes and waits until each is connected to all the others."""
        if self.processes:
            raise RuntimeError("already started")
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="fhenode-cluster-"))
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            first = self._spawn(0, None)

            def addresses() -> Optional[Dict[str, Any]]:
                status = first.status()
                return status if status["listen_addrs"] else None

            status = self._wait_for("listen address of node 0", addresses)
            self._bootstrap = f"{status['listen_addrs'][0]}/p2p/{status['peer_id']}"
            for i in range(1, self.size):
                self._spawn(i, self._bootstrap)
            self._wait_connected()
        except BaseException:
            self.stop(keep=True)
            raise
        return list(self.nodes)

    def _wait_connected(self) -> None:
        """Until every node lists every other one with its protocols."""
        ids = [self._wait_for(f"status of {n}", n.status)["peer_id"] for n in self.nodes]
        for node, me in zip(self.nodes, ids):
            others = set(ids) - {me}

            def connected(node: Node = node, others: Set[str] = others) -> Optional[bool]:
                ready = {p["peer_id"] for p in node.peers() if p.get("protocols")}
                return True if others <= ready else None

            self._wait_for(f"peers of {node}", connected)

    def restart(self, index: int, kill: bool = True) -> None:
        """Kills node ``index`` (SIGKILL; SIGTERM with ``kill=False``) and starts it again on
        its data and API port, so that its :class:`Node` keeps working; returns once every
        node is connected to every other again."""
        process = self.processes[index]
        if kill:
            process.kill()
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=self.stop_timeout)
        port = int(self.nodes[index].url.rsplit(":", 1)[1])
        self._spawn(index, None if index == 0 else self._bootstrap, port)
        self._wait_connected()

    # -- stopping ---------------------------------------------------------------------------

    def stop(self, keep: bool = False) -> None:
        """Stops every node (SIGTERM, then SIGKILL after ``stop_timeout``); removes the
        temporary folder unless ``keep`` (then its path is printed to stderr)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        self.processes.clear()
        if self.root is not None and self._own_root:
            if keep:
                print(f"fhenode node data and logs kept in {self.root}", file=sys.stderr)
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> List[Node]:
        return self.start()

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop(keep=kind is not None)
