"""``edgecut replay --chain``: a chain plan replayed over one real trace per hop, through
real ``edgecut serve`` processes (the middle one relaying) behind link emulators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import cli

CHAIN = "device=jetson-nano,edge=here,cloud=here"
LINKS = "edge=1000Mbit/2ms,cloud=20Mbit/40ms"


def _check_served(result: dict[str, Any], requests: int) -> None:
    """Each node's server counted what the plan each strategy ran says it must have: a
    request reaches every node up to the deepest one its plan uses, and each node before
    that deepest one forwarded it (no fallbacks happened, checked by the caller)."""
    names = [n for n, _ in result["nodes"]]
    by_strategy: dict[str, set[str]] = {}
    for r in result["requests"]:
        by_strategy.setdefault(r["strategy"], set()).add(r["plan"])
    for strat, plans in by_strategy.items():
        expected = {n: {"answered": 0, "forwarded": 0} for n in names[1:]}
        for pid in plans:
            deepest = max(names.index(n) for n in result["plans"][pid]["nodes_used"])
            count = sum(1 for r in result["requests"] if r["strategy"] == strat and r["plan"] == pid)
            for j in range(1, deepest + 1):
                expected[names[j]]["answered"] += count
                if j < deepest:
                    expected[names[j]]["forwarded"] += count
        served = result["info"]["served"][strat]
        for n in names[1:]:
            if n not in served:  # no plan used that node, so it was not started
                assert not any(expected[n].values()), (strat, n, served)
                continue
            assert served[n]["answered"] == expected[n]["answered"], (strat, n, served)
            assert served[n]["forwarded"] == expected[n]["forwarded"], (strat, n, served)
            assert served[n]["finished_here"] == 0, (strat, n, served)


@pytest.mark.slow
def test_replay_chain_prints_each_requests_placement(tmp_path: Path, traces_dir: Path) -> None:
    out = tmp_path / "out"
    trace = traces_dir / "nr5g_5gophers" / "car-driving-trace-1.csv"
    r = CliRunner().invoke(cli, [
        "replay", "--model", "squeezenet", "--chain", CHAIN, "--links", LINKS,
        "--trace", f"cloud={trace}#carrier=TMobile", "--requests", "4", "--duration", "2",
        "--window", "40", "--out", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "replay_chain.json").read_text())
    result["requests"] = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    strategies = ["device", "device+edge", "device+cloud", "chain"]
    assert list(result["summary"]) == strategies + ["oracle"]
    assert len(result["requests"]) == 4 * len(strategies)
    layers = sum(result["plans"]["p0"]["layers"].values())
    for rec in result["requests"]:
        assert rec["status"] == "ok", rec
        assert rec["latency_ms"] > 0 and rec["max_abs_diff"] <= 1e-4
        # every layer ran somewhere, on nodes of the chain
        assert sum(rec["placement"].values()) == layers
        assert set(rec["placement"]) <= {"device", "edge", "cloud"}
    assert result["info"]["lost"] == 0 and result["info"]["fallbacks"] == 0
    # the WAN hop followed the trace; the LAN hop the constant rate of --links
    hops = {h["into"]: h for h in result["info"]["hops"]}
    assert "car-driving" in hops["cloud"]["trace"] and hops["edge"]["mean_mbps"] == 1000
    assert hops["cloud"]["rtt_ms"] == pytest.approx(40.0)
    _check_served(result, 4)
    # the device strategy never reaches a server; device+cloud passes the edge node
    assert all(c["answered"] == 0 for c in result["info"]["served"]["device"].values())
    # the text output: a line per request of the chain strategy with its placement
    chain_recs = [x for x in result["requests"] if x["strategy"] == "chain"]
    printed = r.output.split("chain strategy, per request:")[1]
    for rec in chain_recs:
        place = " + ".join(f"{n} {k}" for n, k in rec["placement"].items())
        assert any(line.split()[:1] == [str(rec["i"] + 1)] and place in line and rec["plan"] in line
                   for line in printed.splitlines()), (rec, printed)
    assert "what each node's server counted" in r.output
    for s in strategies + ["oracle"]:
        assert any(line.startswith(s + " ") for line in r.output.splitlines()), s
    assert (out / "replay_chain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_replay_two_node_chain_as_json(tmp_path: Path, traces_dir: Path) -> None:
    out = tmp_path / "out"
    trace = traces_dir / "nr5g_5gophers" / "car-driving-trace-1.csv"
    r = CliRunner().invoke(cli, [
        "replay", "--model", "squeezenet", "--chain", "device=jetson-nano,cloud=here",
        "--links", "cloud=20Mbit/40ms", "--trace", f"cloud={trace}#carrier=TMobile", "--requests", "3",
        "--duration", "2", "--window", "30", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output + r.stderr
    result = json.loads(r.stdout)  # stdout is one JSON document, progress went to stderr
    assert "profiling" in r.stderr
    assert [n for n, _ in result["nodes"]] == ["device", "cloud"]
    assert list(result["summary"]) == ["device", "device+cloud", "chain", "oracle"]
    assert len(result["requests"]) == 3 * 3
    assert all(rec["status"] == "ok" and rec["max_abs_diff"] <= 1e-4 for rec in result["requests"])
    assert all(len(rec["estimate_mbps"]) == 1 for rec in result["requests"] if rec["strategy"] == "chain")
    _check_served(result, 3)
    for s in ("device", "device+cloud", "chain"):
        assert result["summary"][s]["answered"] == 3
    assert result["summary"]["oracle"]["mean_ms"] <= min(
        result["summary"][s]["mean_ms"] for s in ("device", "device+cloud", "chain")) + 1e-6


@pytest.mark.slow
def test_replay_chain_edge_node_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [
        "replay", "--model", "squeezenet", "--chain", CHAIN, "--links", LINKS, "--requests", "4",
        "--duration", "2", "--window", "20", "--kill", "edge@2", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert "killing edge's edgecut serve after 2 chain requests" in r.stderr
    chain = [x for x in result["requests"] if x["strategy"] == "chain"]
    layers = sum(result["plans"]["p0"]["layers"].values())
    # precondition: a Nano-speed device with a 1 Gbit/s LAN sends its work to the edge node
    assert all("edge" in result["plans"][x["plan"]]["nodes_used"] for x in chain), result["plans"]
    assert [x["status"] for x in chain] == ["ok", "ok", "fallback", "fallback"]
    # the requests after the kill ran every layer on the device, with the right answer
    assert [x["placement"] for x in chain[2:]] == [{"device": layers}] * 2
    assert all(x["max_abs_diff"] <= 1e-4 for x in chain)
    assert result["info"]["lost"] == 0 and result["info"]["fallbacks"] == 2
    assert result["info"]["killed"] == {"node": "edge", "after_chain_requests": 2, "done": True}
    assert "edge" not in result["info"]["served"]["chain"]  # dead: nothing to read
    assert result["summary"]["chain"]["answered"] == 4 and result["summary"]["chain"]["fallbacks"] == 2


@pytest.mark.slow
def test_replay_chain_remembers_a_dead_hop_until_its_breaker_resets(tmp_path: Path) -> None:
    """The edge node killed after 2 chain requests and started again after 6, requests
    2 trace seconds apart, the first hop's breaker opening after 1 failure for 5 trace
    seconds (policy.toml [offload]): after the first fallback, the requests do not try the
    dead hop (the device's own plan runs, no fallback) until the reset; the trial after
    it fails while the node is still down (open again), and the trial after the node is
    back succeeds, so the chain uses it again."""
    policy = tmp_path / "policy.toml"
    policy.write_text("[offload]\nbreaker_failures = 1\nbreaker_reset_s = 5.0\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [
        "replay", "--model", "squeezenet", "--chain", CHAIN, "--links", LINKS, "--requests", "10",
        "--duration", "2", "--window", "20", "--kill", "edge@2", "--revive", "edge@6",
        "--policy", str(policy), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert "starting edge's edgecut serve again after 6 chain requests" in r.stderr
    chain = [x for x in result["requests"] if x["strategy"] == "chain"]
    assert [x["t_trace_s"] >= 2.0 * x["i"] for x in chain] == [True] * 10
    # precondition: every request's wanted plan runs layers on the edge node
    assert all("edge" in result["plans"][x["wanted"]]["nodes_used"] for x in chain), result["plans"]
    device_plan = next(p for p, m in result["plans"].items() if m["nodes_used"] == ["device"])
    assert [x["status"] for x in chain] == ["ok", "ok", "fallback", "ok", "ok", "fallback", "ok", "ok",
                                            "ok", "ok"]
    assert [x["breaker"] for x in chain] == ["closed", "closed", "closed", "open", "open", "half-open",
                                             "open", "open", "half-open", "closed"]
    routed = [x["i"] for x in chain if x["hop_down"] is not None]
    assert routed == [3, 4, 6, 7]
    for x in chain:
        if x["i"] in routed:  # not tried: the device's own plan ran, every layer on the device
            assert x["hop_down"] == "edge" and x["plan"] == device_plan
            assert x["placement"] == {"device": sum(result["plans"][device_plan]["layers"].values())}
        else:  # tried: the wanted plan (its trial included)
            assert x["plan"] == x["wanted"]
        assert x["max_abs_diff"] <= 1e-4
    assert result["info"]["routed_around"] == 4 and result["info"]["lost"] == 0
    assert result["info"]["breaker"] == {"failures": 1, "reset_s": 5.0}
    assert result["info"]["revived"] == {"node": "edge", "after_chain_requests": 6, "done": True}
    # the revived edge node answered the two requests sent to it after it came back
    assert result["info"]["served"]["chain"]["edge"]["answered"] == 2


@pytest.mark.slow
def test_replay_chain_objective_energy_plans_for_device_energy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [
        "replay", "--model", "squeezenet", "--chain", "device=jetson-nano,cloud=here",
        "--links", "cloud=20Mbit/40ms", "--requests", "2", "--duration", "1", "--window", "4",
        "--objective", "energy", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["info"]["objective"] == "energy"
    assert any("objective energy" in n for n in result["notes"])
    # constant links: every request is planned at the mean rates, for the least device
    # energy over every labelling, so no deployed plan predicts less energy there
    chain = {x["plan"] for x in result["requests"] if x["strategy"] == "chain"}
    least = min(m["predicted_mj_at_mean"] for m in result["plans"].values())
    assert all(result["plans"][p]["predicted_mj_at_mean"] <= least + 1e-6 for p in chain), result["plans"]
    assert all(x["status"] == "ok" for x in result["requests"])


@pytest.mark.parametrize("args, hint, words", [
    (["--chain", "device", "--links", LINKS], "--chain", "expected name=profile"),
    (["--chain", "device=jetson-nano", "--links", LINKS], "--chain", "at least two nodes"),
    (["--chain", "device=nosuchboard,cloud=here", "--links", "cloud=20Mbit/40ms"], "--chain",
     "unknown device profile 'nosuchboard'"),
    (["--chain", CHAIN], "--links", "--chain needs --links"),
    (["--chain", CHAIN, "--links", "edge=1000Mbit"], "--links", "expected node=rate/rtt"),
    (["--chain", CHAIN, "--links", "edge=1000Mbit/2ms"], "--links", "no link into ['cloud']"),
    (["--chain", CHAIN, "--links", LINKS, "--trace", "wan=TRACE"], "--trace",
     "'wan' is not a chain node after the device"),
    (["--chain", CHAIN, "--links", LINKS, "--trace", "device=TRACE"], "--trace",
     "'device' is not a chain node after the device"),
    (["--chain", CHAIN, "--links", LINKS, "--trace", "TRACE"], "--trace", "expected node=FILE"),
    (["--chain", CHAIN, "--links", LINKS, "--trace", "cloud=TRACE", "--trace", "cloud=TRACE"],
     "--trace", "given twice"),
    (["--chain", CHAIN, "--links", LINKS, "--trace", "cloud=/nonexistent/trace.log"], "--trace",
     "hop into 'cloud': /nonexistent/trace.log: no such file"),
    (["--chain", CHAIN, "--links", LINKS, "--device", "jetson-nano"], "--device", "does not apply"),
    (["--chain", CHAIN, "--links", LINKS, "--rtt-ms", "10"], "--rtt-ms", "does not apply"),
    (["--links", LINKS, "--device", "jetson-nano"], "--links", "--links needs --chain"),
    (["--kill", "edge@1", "--device", "jetson-nano"], "--kill", "--kill needs --chain"),
    (["--chain", CHAIN, "--links", LINKS, "--kill", "device@1"], "--kill", "expected NODE@K"),
    (["--chain", CHAIN, "--links", LINKS, "--kill", "edge"], "--kill", "expected NODE@K"),
    (["--chain", CHAIN, "--links", LINKS, "--kill", "edge@40"], "--kill", "0 <= K < --requests (40)"),
    (["--revive", "edge@3", "--device", "jetson-nano"], "--revive", "--revive needs --chain"),
    (["--objective", "energy", "--device", "jetson-nano"], "--objective", "--objective needs --chain"),
    (["--chain", CHAIN, "--links", LINKS, "--revive", "edge@3"], "--revive", "the node of --kill"),
    (["--chain", CHAIN, "--links", LINKS, "--kill", "edge@3", "--revive", "cloud@5"], "--revive",
     "the node of --kill"),
    (["--chain", CHAIN, "--links", LINKS, "--kill", "edge@3", "--revive", "edge@3"], "--revive",
     "--kill's K < K < --requests"),
    (["--chain", CHAIN, "--links", LINKS, "--objective", "throughput"], "--objective", "throughput"),
])
def test_replay_chain_rejects_bad_input(tmp_path: Path, traces_dir: Path, args: list[str], hint: str,
                                        words: str) -> None:
    trace = str(traces_dir / "lte_nyu_mets" / "bus62.csv")
    args = [a.replace("TRACE", trace) for a in args]
    r = CliRunner().invoke(cli, ["replay", "--model", "squeezenet", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert hint in r.output and words in r.output, r.output
    # refused before anything ran
    assert not (tmp_path / "o").exists()
