from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from devices import load_profile
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
    speed = load_profile("jetson-nano").relative_speed
    assert "device compute emulated" in result.output
    assert f"relative_speed {speed:g}" in result.output
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
    # The probes sent during the run are charged to edgecut: their radio time at transmit
    # power, shared out over the requests, is in each request's energy.
    from devices import EnergyModel

    info = summary["info"]
    tx_w = EnergyModel.from_profile(load_profile("jetson-nano")).tx_w
    assert info["probe_mj_per_request"] == pytest.approx(
        tx_w * info["probe_radio_s"] * 1000 / 8, abs=0.1)
    assert summary["summary"]["edgecut"]["energy_mj"] == pytest.approx(
        sum(r["edgecut_mj"] for r in requests) / 8, abs=0.05)
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
    from edge.lab._replay import replay
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


def _outcome(cut: str, kind: str, *, head_ms: float = 0.0, local_tail_ms: float = 0.0,
             server_ms: float = 0.0, fallback: str = "", raced: str = ""):
    from edge.offload._executor import Outcome
    from edge.policy._decide import Decision

    return Outcome(0, Decision(kind, cut, 0.0, 0.0, "test"), kind, fallback, 0.0, head_ms,
                   0.0, local_tail_ms, 0, 0, 0.0, False, 0.0, server_ms=server_ms,
                   raced=raced)


def test_host_slowdown_is_read_from_what_the_request_computed() -> None:
    from edge.lab._costing import Components, _host_slowdown

    comps = {
        "local": Components("local", "local", 50.0, 100.0, 0.0, 0, 0),
        "offload": Components("offload", "offload", 0.0, 0.0, 60.0, 600_000, 4_000,
                              cloud_compute_ms=50.0),
        "s": Components("s", "split", 40.0, 80.0, 6.0, 8_000, 4_000, cloud_compute_ms=3.0),
    }
    # the request's own device compute
    assert _host_slowdown(_outcome("local", "local", head_ms=150.0), comps) == 1.5
    assert _host_slowdown(_outcome("s", "split", head_ms=40.0, server_ms=9.0), comps) == 0.5
    # sent away whole: the server's compute (the cloud is this host too)
    assert _host_slowdown(_outcome("offload", "offload", server_ms=100.0), comps) == 2.0
    # ... or the whole model when it fell back to the device
    assert _host_slowdown(_outcome("offload", "offload", local_tail_ms=300.0,
                                   fallback="DeadlineExceeded"), comps) == 3.0
    # ... or raced beside it, whichever side answered first (the device's run went on)
    assert _host_slowdown(_outcome("offload", "offload", local_tail_ms=200.0,
                                   server_ms=75.0, raced="cloud"), comps) == 2.0
    assert _host_slowdown(_outcome("offload", "offload", local_tail_ms=150.0,
                                   raced="device"), comps) == 1.5
    # a raced split's device run is its local tail: the head is the gauge
    assert _host_slowdown(_outcome("s", "split", head_ms=120.0, local_tail_ms=60.0,
                                   raced="device"), comps) == 1.5
    # a tail of a few milliseconds is mostly request handling: no gauge, no correction
    assert _host_slowdown(_outcome("s", "split", server_ms=30.0), comps) == 1.0
    # a stall is taken at most as 10x
    assert _host_slowdown(_outcome("offload", "offload", server_ms=5000.0), comps) == 10.0


def test_a_slow_spell_slows_the_modelled_cloud_compute_too() -> None:
    from edge.lab._costing import Components, _parts
    from edge.lab._emulator import Trace

    trace = Trace.from_steps([(0.0, 8e6)], 100.0)  # 1 MB/s
    comp = Components("offload", "offload", 0.0, 0.0, 60.0, 100_000, 1_000)
    head, up, wait, down = _parts(comp, 0.0, 1.0, trace, 1.0, 0.04)
    assert (head, round(up, 3), round(wait, 3), round(down, 3)) == (0.0, 100.0, 100.0, 1.0)
    _, up2, wait2, down2 = _parts(comp, 0.0, 2.0, trace, 1.0, 0.04)
    assert (round(up2, 3), round(wait2, 3), round(down2, 3)) == (100.0, 160.0, 1.0)
