"""The benchmark's rule for choosing trace windows, and how it reads a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices import ConfigError
from edge.lab._cloudgpu import CLOUD_PROFILES, cloud_profile
from edge.lab._emulator import load_trace
from edge.lab._judge import best_fixed, data_files, judge_run, select_windows, summarise


def _fig(mean: float, mj: float, miss: float = 0.0) -> dict[str, float]:
    return {"mean_ms": mean, "p95_ms": mean * 1.5, "energy_mj": mj, "deadline_miss_pct": miss}


def test_every_file_of_every_family_with_seeded_windows(traces_dir: Path) -> None:
    files = data_files(traces_dir)
    assert set(files) == {"fcc", "hsdpa_norway", "mahimahi_us_cellular",
                          "orange4g_uplink_mahimahi", "lte_ghent_belgium", "lte_nyu_mets",
                          "nr5g_5gophers"}
    assert not any(p.name.startswith("UPSTREAM") or p.suffix == ".md"
                   for fs in files.values() for p in fs)
    assert sum(len(v) for v in files.values()) == 183
    durations = {p: load_trace(p).duration_s for fs in files.values() for p in fs}
    a = select_windows(traces_dir, durations, windows=3, window_s=96.0, seed=25)
    b = select_windows(traces_dir, durations, windows=3, window_s=96.0, seed=25)
    assert a == b  # the rule, not a hand, picks them
    per_file: dict[str, list] = {}
    for w in a:
        per_file.setdefault(w.relpath, []).append(w)
        assert 0.0 <= w.offset_s and w.offset_s + w.window_s <= durations[w.path] + 1e-6
    assert len(per_file) == 183  # every file
    for rel, ws in per_file.items():
        long_enough = durations[ws[0].path] > 96.0
        assert len(ws) == (3 if long_enough else 1), rel
    # windows are not the first seconds of each file
    assert sum(1 for w in a if w.offset_s > 0) > len(a) / 2
    other = select_windows(traces_dir, durations, windows=3, window_s=96.0, seed=26)
    assert [w.offset_s for w in other] != [w.offset_s for w in a]
    quick = select_windows(traces_dir, durations, windows=1, window_s=96.0, seed=25,
                           files_per_family=1)
    assert len(quick) == 7 and {w.family for w in quick} == set(files)


def test_best_fixed_in_hindsight_keeps_the_slo_for_the_energy_objective() -> None:
    fixed = {"local": _fig(100, 700), "offload": _fig(80, 200, miss=60.0),
             "split@a": _fig(90, 400, miss=3.0), "split@b": _fig(95, 450, miss=0.0)}
    assert best_fixed(fixed, "latency", 0.0) == "offload"
    # offload misses 60 % of deadlines: not a baseline; split@a misses 3 points more
    # than the oracle, beyond the 2-point slack; split@b is the cheapest that keeps it
    assert best_fixed(fixed, "energy", 0.0) == "split@b"
    assert best_fixed(fixed, "energy", 1.5) == "split@a"
    assert best_fixed({"offload": _fig(80, 200, miss=60.0)}, "energy", 0.0) is None


def test_judge_and_summarise_a_run() -> None:
    fixed = {"local": _fig(100, 700), "offload": _fig(120, 300)}
    strategies = {"edgecut": _fig(105, 850, miss=1.0), "oracle": _fig(100, 650), **{
        f"fixed:{k}": v for k, v in fixed.items()}}
    j = judge_run("latency", strategies, fixed, ["local", "offload", "local"])
    assert j["nontrivial"] and j["oracle_plans"] == ["local", "offload"]
    assert j["ratio_to_oracle"] == 1.05
    assert j["energy_ratio_to_oracle"] == pytest.approx(850 / 650, abs=1e-4)
    assert j["best_fixed_hindsight"] == "local" and j["ratio_to_best_fixed_hindsight"] == 1.05
    assert j["miss_delta_pp"] == 1.0
    trivial = judge_run("latency", strategies, fixed, ["local"] * 3)
    assert not trivial["nontrivial"]
    runs = [{"family": "f", "objective": "latency", "strategies": strategies, **j},
            {"family": "g", "objective": "latency", "strategies": strategies,
             **{**trivial, "ratio_to_oracle": 9.0}}]
    s = summarise(runs)
    assert s["nontrivial_runs"] == 1 and s["nontrivial_families"] == ["f"]
    assert s["worst_ratio_to_oracle"] == 1.05  # the trivial run's 9.0 is not in it
    assert s["all_runs_worst"]["ratio_to_oracle"] == 9.0  # ... but is reported beside it
    assert s["bars"]["latency_mean_to_oracle"]["met"]
    assert not s["bars"]["latency_energy_to_oracle"]["met"]  # 1.31 > 1.25
    assert s["bars"]["nontrivial_runs"] == {"value": 1, "bar": 12, "met": False}
    assert s["worst_energy_ratio_to_oracle"] is None
    assert s["means"]["all"]["latency"]["per_family"]["g"]["edgecut"]["mean_ms"] == 105


def test_cloud_profiles() -> None:
    assert cloud_profile("t4") is CLOUD_PROFILES["t4"]
    assert cloud_profile("T4").compute_scale == pytest.approx(0.1)
    assert cloud_profile("8").relative_speed == 8.0
    with pytest.raises(ConfigError, match="expected one of"):
        cloud_profile("v100-please")
    with pytest.raises(ConfigError, match="must be > 0"):
        cloud_profile("0")
