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


@pytest.mark.slow
def test_demo_chain_runs_real_nodes_and_shows_where_each_request_ran(tmp_path: Path, capsys) -> None:
    out = tmp_path / "chain"
    rc = main(["demo", "chain", "--requests", "3", "--duration", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "demo_chain.json").read_text())
    assert [n for n, _ in result["nodes"]] == ["device", "edge", "cloud"]
    assert "starting edgecut serve for edge on 127.0.0.1:" in printed
    assert list(result["summary"]) == ["device", "device+edge", "device+cloud", "chain", "oracle"]
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(requests) == 4 * 3
    labels = {"device": "device alone", "device+edge": "device + edge only",
              "device+cloud": "device + cloud only", "chain": "chain plan (per request)"}
    for rec in requests:
        assert rec["status"] == "ok" and rec["max_abs_diff"] <= 1e-4
        # the live line of this request names its strategy, number and where its layers ran
        place = " + ".join(f"{n} {k}" for n, k in rec["placement"].items())
        assert any(labels[rec["strategy"]] in line and f"#{rec['i'] + 1} " in line and place in line
                   for line in printed.splitlines()), rec
    # what the servers counted agrees with the plans: a plan that uses the cloud went
    # through the edge node, which relayed it; the device alone reached no server
    served = result["info"]["served"]
    assert all(c["answered"] == 0 for c in served["device"].values())
    for strat in ("device+edge", "device+cloud", "chain"):
        plans = {r["plan"] for r in requests if r["strategy"] == strat}
        to_cloud = sum(1 for r in requests if r["strategy"] == strat and "cloud" in r["placement"])
        off = sum(1 for r in requests if r["strategy"] == strat and set(r["placement"]) != {"device"})
        assert served[strat].get("edge", {}).get("answered", 0) == off, (strat, plans, served)
        assert served[strat].get("edge", {}).get("forwarded", 0) == to_cloud, (strat, served)
        assert served[strat].get("cloud", {}).get("answered", 0) == to_cloud, (strat, served)
    assert "what each edgecut serve counted" in printed and "summary" in printed
    assert result["info"]["lost"] == 0


def test_demo_chain_rejects_bad_settings(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edge.cli import cli

    for args, hint in ((["--lan", "fast"], "--lan"), (["--wan", "20Mbit"], "--wan"),
                       (["--device", "nosuchboard"], "--device"), (["--model", "nosuchnet"], "--model"),
                       (["--trace", str(tmp_path / "none.csv")], "--trace"),
                       (["--requests", "3", "--kill-edge-after", "3"], "--kill-edge-after")):
        r = CliRunner().invoke(cli, ["demo", "chain", "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 2 and hint in r.output, (args, r.output)
        assert not (tmp_path / "o").exists()
