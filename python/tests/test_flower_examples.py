"""The examples in ``examples/`` run, with two rounds, and learn: each starts its own three
nodes (from ``$FHENODE_BIN``, else the checkout's build), so they are skipped without one."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from fhenode.testing import find_binary

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 120.0  # seconds for a whole example: three nodes started, two rounds, stopped


def run_example(name: str) -> List[float]:
    """Runs ``examples/<name>`` with ``--rounds 2``; returns the accuracy it printed for
    each round (round 0 first: the initial model)."""
    binary = find_binary()
    if binary is None:
        pytest.skip("no fhenode binary: build it (cargo build --release) or set FHENODE_BIN")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--rounds", "2"],
        cwd=EXAMPLES.parent,
        env={**os.environ, "FHENODE_BIN": str(binary)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rounds = re.findall(r"^round (\d+): accuracy ([0-9.]+)", done.stdout, re.MULTILINE)
    assert [int(r) for r, _ in rounds] == [0, 1, 2], done.stdout
    return [float(a) for _, a in rounds]


@pytest.mark.node
def test_logistic_regression_example_learns() -> None:
    accuracy = run_example("logistic_regression.py")
    assert accuracy[-1] > 0.75  # chance is about 0.5, the initial model's accuracy
    assert accuracy[-1] > accuracy[0] + 0.2


@pytest.mark.node
@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="needs flwr")
def test_flower_example_learns() -> None:
    accuracy = run_example("flower_logistic_regression.py")
    assert accuracy[-1] > 0.75
    assert accuracy[-1] > accuracy[0] + 0.2
