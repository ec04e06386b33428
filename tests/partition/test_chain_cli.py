"""``edgecut partition --chain ... --links ...``: the plan table and each node's files."""

from __future__ import annotations

import json

import onnx
import pytest

from devices.errors import ConfigError
from edge.cli import main
from partition._chain_cli import parse_chain, parse_links


def test_chain_partition_prints_the_plan_and_writes_every_node(tmp_path, zoo_model, capsys) -> None:
    model = zoo_model("squeezenet")
    out_dir = tmp_path / "chain"
    # a slow LAN and a fast WAN with a weak edge node: the cloud takes the tail
    rc = main(["partition", str(model), "--chain", "device=jetson-nano,edge=raspberry-pi-5,cloud=here",
               "--links", "edge=50Mbit/2ms,cloud=1000Mbit/5ms", "--objective", "throughput",
               "--slo-ms", "2000", "--out", str(out_dir), "--runs", "1",
               "--relay-url", "edge=http://127.0.0.1:9000"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "device -> edge -> cloud" in text and "frames/s" in text
    assert "best with device + edge only" in text and "best with device + cloud only" in text
    assert (out_dir / "chain.png").stat().st_size > 5000  # where each layer runs
    doc = json.loads((out_dir / "device" / "chain.json").read_text())
    assert doc["nodes"] == ["device", "edge", "cloud"] and doc["objective"] == "throughput"
    assert set(doc["labels"].values()) <= {0, 1, 2}
    assert doc["hops"] == [[50e6, 0.002], [1e9, 0.005]]
    # every node that receives anything has a Triton repository with a valid model
    for j, name in ((1, "edge"), (2, "cloud")):
        if doc["boundaries"][j - 1]:
            folder = out_dir / name / "repository" / f"{model.stem}.seg{j}"
            onnx.checker.check_model(str(folder / "1" / "model.onnx"))
            config = (folder / "config.pbtxt").read_text()
            assert f'name: "{model.stem}.seg{j}"' in config
            if name == "edge" and doc["boundaries"][1]:
                assert "relay_next_url" in config and "http://127.0.0.1:9000" in config


def test_chain_arguments_are_checked() -> None:
    nodes = parse_chain("device=jetson-nano,edge=jetson-agx-orin,cloud=here")
    assert nodes == [("device", "jetson-nano"), ("edge", "jetson-agx-orin"), ("cloud", "here")]
    hops = parse_links("edge=1000Mbit/2ms,cloud=20Mbit/40ms", nodes)
    assert [(h.bandwidth_bps, h.rtt_s) for h in hops] == [(1e9, 0.002), (20e6, 0.04)]
    with pytest.raises(ConfigError, match="at least two nodes"):
        parse_chain("device=jetson-nano")
    with pytest.raises(ConfigError, match="name=profile"):
        parse_chain("device,cloud=here")
    with pytest.raises(ConfigError, match="no link into"):
        parse_links("edge=1000Mbit/2ms", nodes)
    with pytest.raises(ConfigError, match="not among"):
        parse_links("edge=1000Mbit/2ms,cloud=20Mbit/40ms,moon=1Mbit/1s", nodes)
    with pytest.raises(ConfigError, match="rate/rtt"):
        parse_links("edge=1000Mbit,cloud=20Mbit/40ms", nodes)


def test_partition_without_chain_still_needs_its_link(tmp_path, zoo_model, capsys) -> None:
    rc = main(["partition", str(zoo_model("squeezenet")), "--device", "jetson-nano", "--cloud", "here",
               "--rtt", "40ms", "--out", str(tmp_path / "p")])
    assert rc == 2 and "--bandwidth" in capsys.readouterr().err
    rc = main(["partition", str(zoo_model("squeezenet")), "--chain", "device=jetson-nano,cloud=here",
               "--out", str(tmp_path / "p")])
    assert rc == 2 and "--links" in capsys.readouterr().err
