"""Three real ``fhenode run`` processes on loopback, shared by the tests that need nodes.

The binary is ``$FHENODE_BIN``, else ``target/release/fhenode``, else ``target/debug/fhenode``
in the repository; the tests that need nodes are skipped when there is none. Each node's log
is kept in pytest's temporary directory, and its path is shown with any failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List

import pytest

from fhenode import Node
from fhenode.testing import LocalCluster, find_binary

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# Log files of the running cluster, shown with failing tests' reports.
_LOGS: List[Path] = []


class Cluster(List[Node]):
    """The running nodes, as a list of clients, and what restarts one of them."""

    def __init__(self, local: LocalCluster, nodes: List[Node]):
        super().__init__(nodes)
        self.local = local

    def restart(self, i: int, kill: bool = True) -> None:
        """Kills node ``i`` (SIGKILL; SIGTERM with ``kill=False``) and starts it again on its
        data and API port, so that ``self[i]`` keeps working; returns once the nodes are
        connected again."""
        self.local.restart(i, kill=kill)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three connected nodes; node 0 is the one the others bootstrapped from."""
    binary = find_binary()
    if binary is None:
        pytest.skip(
            "no fhenode binary: build it (cargo build --release) or set FHENODE_BIN "
            f"(looked for $FHENODE_BIN, then {REPO}/target/{{release,debug}}/fhenode)"
        )
    root = tmp_path_factory.mktemp("nodes")
    print(f"fhenode binary {binary}; node data and logs in {root}")
    local = LocalCluster(
        3,
        binary=binary,
        config=REPO / "config" / "fhenode.toml",
        root=root,
        start_timeout=START_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
    )
    try:
        nodes = local.start()
        _LOGS.extend(local.logs)
        yield Cluster(local, nodes)
    finally:
        local.stop()
        _LOGS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    """Adds the node logs' paths to the report of a failing test that used the cluster."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and _LOGS and "cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("fhenode node logs", "\n".join(str(p) for p in _LOGS)))
