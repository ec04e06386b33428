from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from partition import zoo

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def serve_connections(sock: socket.socket,
                      handle: Callable[[socket.socket], None]) -> threading.Thread:
    """Accept on the listening ``sock`` until it is closed; each connection is handled by
    ``handle`` on a thread of its own (test servers speaking raw sockets)."""

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def zoo_model() -> Callable[[str], Path]:
    """Path of a materialized zoo model (built into the cache on first use)."""
    return zoo.zoo_model


@pytest.fixture(scope="session")
def trained_model() -> Callable[[str], Path]:
    """Path of a trained model fetched from its PyPI package on first use."""
    return zoo.trained_model


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """The shared real bandwidth traces (../shared/data/traces)."""
    path = SHARED / "data" / "traces"
    assert path.is_dir(), f"expected the shared traces at {path}"
    return path
