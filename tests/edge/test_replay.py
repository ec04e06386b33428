from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import cli


@pytest.mark.slow
def test_replay_command_end_to_end(tmp_path: Path, traces_dir: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("slo_ms = 150\n")
    out = tmp_path / "out"
    trace = traces_dir / "lte_nyu_mets" / "bus62.csv"
    result = CliRunner().invoke(cli, [
        "replay", "--trace", str(trace), "--model", "squeezenet", "--device", "jetson-nano",
        "--policy", str(policy), "--requests", "8", "--duration", "3", "--window", "120",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "device compute emulated" in result.output and "relative_speed 0.32" in result.output
    for name in ("local", "cloud", "static_split", "edgecut", "oracle"):
        assert name in result.output
    summary = json.loads((out / "replay.json").read_text())
    assert set(summary["summary"]) == {"local", "cloud", "static_split", "edgecut", "oracle"}
    for s in summary["summary"].values():
        assert s["mean_ms"] > 0 and s["p95_ms"] >= s["mean_ms"] * 0.5 and s["energy_mj"] > 0
    # The hindsight bound (the cheapest realised cost of each request) is never worse than
    # any strategy on the same requests; the oracle, which knows the bandwidth but not
    # the host's stalls, can be unlucky on a few requests but not beyond the bound.
    bound = summary["info"]["oracle_hindsight"]["mean_ms"]
    for name in ("local", "cloud", "static_split", "edgecut", "oracle"):
        assert bound <= summary["summary"][name]["mean_ms"] + 1e-6, name
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(requests) == 8 and all("plan" in r and "met_mbps" in r for r in requests)
    decisions = (out / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 8 and "reason" in json.loads(decisions[0])["decision"]
    png = (out / "replay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_replay_rejects_unknown_model_and_bad_trace(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["replay", "--model", "nosuchnet", "--device", "jetson-nano",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown model 'nosuchnet'" in r.output
    r = CliRunner().invoke(cli, ["replay", "--trace", str(tmp_path / "none.log"), "--model",
                                 "squeezenet", "--device", "jetson-nano", "--out", str(tmp_path)])
    assert r.exit_code != 0
    assert "trace file not found" in str(r.exception) or "trace file not found" in r.output


@pytest.mark.slow
def test_replay_sets_the_slo_from_the_measured_local_latency(tmp_path: Path,
                                                             traces_dir: Path) -> None:
    from edge._replay import replay
    from edge.policy import policy_config_from_text
    from partition import zoo_model

    r = replay(traces_dir / "lte_nyu_mets" / "bus62.csv", zoo_model("squeezenet"),
               "jetson-nano", policy_config_from_text("slo_ms = 5000\n"),
               plan_dir=tmp_path / "plan", out_dir=tmp_path / "out", requests=4,
               duration_s=2.0, window_s=40.0, plot=False, slo_from_local=(1.3, 1.0))
    local_ms = r.components["local"].device_head_ms
    assert local_ms > 0 and r.slo_ms == round(1.3 * local_ms)
    decisions = [json.loads(line)["decision"]
                 for line in (tmp_path / "out" / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 4 and all(d["deadline_ms"] == r.slo_ms for d in decisions)
