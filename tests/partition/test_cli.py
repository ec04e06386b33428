"""`edgecut profile` and `edgecut partition` end to end through the real console entry."""

from __future__ import annotations

import json

import onnx

from devices import load_profile
from edge.cli import main
from partition import Plan


def test_profile_then_partition_write_everything(tmp_path, zoo_model, capsys) -> None:
    model = zoo_model("squeezenet")
    prof = tmp_path / "profile.json"
    assert main(["profile", str(model), "--device", "jetson-nano", "--out", str(prof),
                 "--runs", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"relative_speed {load_profile('jetson-nano').relative_speed:g}" in out and "cost model" in out
    data = json.loads(prof.read_text())
    assert data["emulated"] is True and data["device"] == "jetson-nano" and data["nodes"]

    plan_dir = tmp_path / "plan"
    rc = main(["partition", str(model), "--device", "jetson-nano", "--cloud", "here",
               "--bandwidth", "20Mbit", "--rtt", "40ms", "--out", str(plan_dir), "--keep", "2",
               "--device-profile", str(prof), "--runs", "2", "--measure", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "chosen" in out and "total ms" in out
    plan = Plan.load(plan_dir / "plan.json")
    assert plan.link == {"bandwidth_bps": 20e6, "rtt_s": 0.04}
    assert plan.chosen in out
    assert (plan_dir / "plan.png").stat().st_size > 5000
    for c in plan.candidates:
        for f in (c.head_model, c.tail_model):
            if f:
                onnx.checker.check_model(str(plan_dir / f))

    # --wire fp16: the same candidates, half the bytes up, FP16 cloud inputs.
    half_dir = tmp_path / "plan16"
    assert main(["partition", str(model), "--device", "jetson-nano", "--cloud", "here",
                 "--bandwidth", "20Mbit", "--rtt", "40ms", "--out", str(half_dir), "--keep", "2",
                 "--device-profile", str(prof), "--runs", "2", "--measure", "0",
                 "--no-figure", "--wire", "fp16"]) == 0
    half = Plan.load(half_dir / "plan.json")
    assert half.info["wire"] == "fp16" and plan.info["wire"] == "fp32"
    assert half.candidate("offload").up_bytes * 2 == plan.candidate("offload").up_bytes
    for c in half.candidates:
        if c.kind != "local":
            assert c.extra["wire_fp16"] == list(c.tensors)
            tail = onnx.load(str(half_dir / c.tail_model))
            assert {i.name: i.type.tensor_type.elem_type for i in tail.graph.input
                    if i.name in c.tensors} == dict.fromkeys(c.tensors, onnx.TensorProto.FLOAT16)
    assert main(["partition", str(model), "--device", "jetson-nano", "--cloud", "here",
                 "--bandwidth", "20Mbit", "--rtt", "40ms", "--out", str(half_dir),
                 "--wire", "int4"]) == 2
    assert "int4" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, zoo_model, capsys) -> None:
    model = zoo_model("squeezenet")
    base = ["partition", str(model), "--cloud", "here", "--rtt", "40ms", "--out", str(tmp_path / "p")]
    assert main(base + ["--device", "jetson-nano", "--bandwidth", "20MB"]) == 2
    assert "bandwidth '20MB'" in capsys.readouterr().err
    assert main(base + ["--device", "no-such-board", "--bandwidth", "20Mbit"]) == 2
    assert "unknown device profile 'no-such-board'" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "missing.onnx"), "--device", "jetson-nano",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "missing.onnx" in capsys.readouterr().err
