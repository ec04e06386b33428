from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.lab._demo import default_trace


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_the_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--model", "squeezenet", "--requests", "8", "--duration", "6",
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for label in ("local only", "cloud only", "static split", "edgecut", "oracle"):
        assert label in printed
    assert "agent serving the Open Inference Protocol" in printed
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["summary"]) == {"local", "cloud", "static_split", "edgecut", "oracle"}
    for strategy in summary["summary"].values():
        assert strategy["mean_ms"] > 0
        assert strategy["p95_ms"] >= strategy["mean_ms"] * 0.5
    # Every request went through the agent and is in the per-request log.
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 8
    assert (out / "replay.png").stat().st_size > 10_000
    # The oracle is never worse than a fixed strategy on the same requests.
    s = summary["summary"]
    assert s["oracle"]["mean_ms"] <= min(s["local"]["mean_ms"], s["cloud"]["mean_ms"]) + 1e-6


def test_demo_default_trace_is_a_real_shared_trace() -> None:
    trace = default_trace()
    assert trace is not None and "nr5g_5gophers" in trace
    assert Path(trace.split("#")[0]).is_file()
