"""The agent's fast lane: inline inferences answered inside the HTTP protocol.

Every request is sent byte for byte to two real agents, one with ``[api] fast_lane`` on and
one with it off; the answers must be the same, and the lane must have answered the ones
it is meant for.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httptools
import numpy as np

from cloud.protocol import decode_infer_response, encode_infer_request
from edge import Client
from edge.agent._daemon import Agent, AgentServer
from tests.edge.conftest import slow_model, tiny_model, write_agent_config


class _Answers:
    """httptools callbacks collecting every response of a connection, in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))


def _exchange(path: Path, raw: bytes, answers: int = 1) -> tuple[list[tuple[int, dict, bytes]], bool]:
    """Send ``raw`` on a fresh Unix-socket connection; read ``answers`` responses.

    Returns them as (status, headers, body), and whether the server then closed the
    connection.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(raw)
        collected = _Answers()
        while len(collected.done) < answers:
            data = sock.recv(1 << 16)
            assert data, "the connection closed before the answers were complete"
            collected.parser.feed_data(data)
        sock.settimeout(0.2)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return collected.done, closed


def _post(model: str, body: bytes, headers: dict[str, str] | None = None,
          extra: str = "") -> bytes:
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: localhost\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (head + extra + "\r\n").encode() + body


def _chunked(model: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: localhost\r\n"
    head += "Transfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    return (head + "\r\n").encode() + chunks + b"0\r\n\r\n"


def _agents(tmp_path: Path) -> list[tuple[AgentServer, Path]]:
    models = {"tiny": tiny_model(tmp_path / "t.onnx"),
              "slow": slow_model(tmp_path / "s.onnx", size=256, layers=400)}
    servers = []
    for lane in (True, False):
        d = tmp_path / ("lane" if lane else "plain")
        d.mkdir()
        cfg = write_agent_config(d, models=models, workers=1)
        # 5 ms: the tiny model runs inline, the slow one (~50 ms) on its worker thread.
        cfg.write_text(cfg.read_text().replace(
            "workers = 1", f"workers = 1\ninline_max_ms = 5\nfast_lane = {str(lane).lower()}"))
        servers.append((AgentServer(Agent(cfg)), d / "agent.sock"))
    return servers


def _comparable(answer: tuple[int, dict, bytes]) -> tuple[int, dict, bytes]:
    status, headers, body = answer
    kept = {k: v for k, v in headers.items() if k not in ("date", "x-request-id", "server-timing")}
    timing = headers.get("server-timing")
    kept["server-timing"] = None if timing is None else [
        part.split(";")[0].strip() for part in timing.split(",")]
    return status, kept, body


def test_the_lane_answers_as_the_ordinary_route(tmp_path: Path) -> None:
    (lane, lane_sock), (plain, plain_sock) = _agents(tmp_path)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    binary_body, binary_headers = encode_infer_request({"x": x})
    json_body, json_headers = encode_infer_request({"x": x}, binary=False, binary_outputs=False)
    wrong_body, wrong_headers = encode_infer_request({"x": x.astype(np.float64)})
    slow_body, slow_headers = encode_infer_request({"x": np.ones((256, 256), np.float32)})
    cases = {
        # name: (raw request, answers expected, lane answers it)
        "binary": (_post("tiny", binary_body, binary_headers), 1, True),
        "json": (_post("tiny", json_body, json_headers), 1, True),
        "wrong dtype": (_post("tiny", wrong_body, wrong_headers), 1, True),
        "request id": (_post("tiny", binary_body, {**binary_headers, "X-Request-ID": "abc-1"}),
                       1, True),
        "unknown model": (_post("nope", binary_body, binary_headers), 1, False),
        "malformed json": (_post("tiny", b"{not json", {"Content-Type": "application/json"}),
                           1, False),
        "queued for the worker": (_post("slow", slow_body, slow_headers), 1, False),
        "pipelined": (_post("tiny", binary_body, binary_headers) * 2, 2, True),
        "chunked": (_chunked("tiny", binary_body, binary_headers), 1, False),
        "connection close": (_post("tiny", binary_body, {**binary_headers,
                                                          "Connection": "close"}), 1, False),
    }
    with lane, plain:
        assert lane.lane is not None and plain.lane is None
        # The first request of a model runs on its worker (no local time known yet); the
        # lane takes the ones after it.
        first = _post("tiny", binary_body, binary_headers)
        for sock in (lane_sock, plain_sock):
            assert _exchange(sock, first)[0][0][0] == 200
        assert lane.lane.answered == 0
        for name, (raw, count, in_lane) in cases.items():
            before = lane.lane.answered
            got, got_closed = _exchange(lane_sock, raw, count)
            want, want_closed = _exchange(plain_sock, raw, count)
            assert [_comparable(a) for a in got] == [_comparable(a) for a in want], name
            assert got_closed == want_closed, name
            assert lane.lane.answered - before == (count if in_lane else 0), name
            if name == "request id":
                assert got[0][1]["x-request-id"] == "abc-1"
        # What the answers say, not only that they agree.
        (status, headers, body), = _exchange(lane_sock, cases["binary"][0])[0]
        assert status == 200
        np.testing.assert_array_equal(decode_infer_response(body, headers)["y"], x * 2)
        assert "agent;dur=" in headers["server-timing"]
        (status, _, body), = _exchange(lane_sock, cases["wrong dtype"][0])[0]
        assert status == 400 and "FP32" in json.loads(body)["error"]
        (status, _, body), = _exchange(lane_sock, cases["unknown model"][0])[0]
        assert status == 404 and "nope" in json.loads(body)["error"]
        # The slow model's answer came through the ordinary cycle, right.
        (status, headers, body), = _exchange(lane_sock, cases["queued for the worker"][0])[0]
        assert status == 200
        np.testing.assert_array_equal(decode_infer_response(body, headers)["y"],
                                      np.ones((256, 256), np.float32))
        # The client's own paths (shared memory on the socket) take the lane too.
        before = lane.lane.answered
        with Client(f"unix://{lane_sock}") as client:
            for _ in range(3):
                np.testing.assert_array_equal(client.infer("tiny", {"x": x})["y"], x * 2)
            assert client.uses_shared_memory
        assert lane.lane.answered - before == 3
    # Every request the agents ran is counted once, whichever route it took.
    # (The checks after the comparison ran two more on the lane's agent, and the client 3.)
    assert lane.agent.stats.total_requests == plain.agent.stats.total_requests + 2 + 3


def test_a_lane_body_counts_against_the_budget_until_answered_or_dropped(tmp_path: Path) -> None:
    (lane, sock_path), _ = _agents(tmp_path)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    body, headers = encode_infer_request({"x": x})
    raw = _post("tiny", body, headers)
    with lane:
        app = lane.inner_app
        assert _exchange(sock_path, raw)[0][0][0] == 200  # the first runs on the worker
        assert _exchange(sock_path, raw)[0][0][0] == 200
        assert app.gate.pending_bytes == 0
        # Headers and half the body, then the client goes away: nothing stays counted.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            sock.sendall(raw[: len(raw) - len(body) // 2])
            # Held as the bytes arrive, not as declared (issue 23: a client that declares a
            # large body and sends one byte must not hold the budget).
            arrived = len(body) - len(body) // 2
            deadline = time.monotonic() + 5
            while app.gate.pending_bytes != arrived and time.monotonic() < deadline:
                time.sleep(0.01)
            assert app.gate.pending_bytes == arrived
        deadline = time.monotonic() + 5
        while app.gate.pending_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.gate.pending_bytes == 0
        # And the agent still answers.
        assert _exchange(sock_path, raw)[0][0][0] == 200
