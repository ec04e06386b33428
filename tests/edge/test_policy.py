"""Table-driven tests of the pure decision function: every rule and every objective."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from devices import EnergyModel, load_profile
from edge.policy import (
    CloudState,
    CutEstimate,
    DeviceState,
    LinkEstimate,
    PolicyConfig,
    PolicyContext,
    Rules,
    decide,
)

ENERGY = EnergyModel.from_profile(load_profile("jetson-nano"))  # 7.5 W active, 1.25 W idle

CANDIDATES = (
    CutEstimate("local", "local", 100.0, 0.0, 0, 0, age_s=0.0, samples=5),
    CutEstimate("offload", "offload", 0.0, 20.0, 600_000, 4_000, sends_raw_input=True,
                age_s=0.0, samples=5),
    CutEstimate("a", "split", 30.0, 15.0, 200_000, 4_000,
                device_layers=frozenset({"conv1", "pool1"}), age_s=0.0, samples=5),
    CutEstimate("b", "split", 80.0, 5.0, 8_000, 4_000,
                device_layers=frozenset({"conv1", "pool1", "fc"}), age_s=0.0, samples=5),
)


def link(mbps: float, *, spread: float = 0.0, age: float = 0.0,
         confidence: float = 1.0, inverse_bias: float = 1.0) -> LinkEstimate:
    return LinkEstimate(mbps * 1e6, 0.02, confidence, spread, age, 5,
                        inverse_bias=inverse_bias)


@dataclass
class Case:
    name: str
    mbps: float
    expect: str
    reason: str = ""
    cfg: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    device: DeviceState = DeviceState()
    cloud: CloudState = CloudState()
    input_bytes: int = 600_000
    spread: float = 0.0
    #: the link's rebound forecast, log(next sample / estimate), with spread 0.3 each way
    rebound: float = 0.0
    link_age: float = 0.0
    confidence: float = 1.0
    draw: float = 1.0
    explore: dict[str, Any] = field(default_factory=dict)
    explored: bool = False
    probe: bool = False
    predicted_ms: float | None = None
    probe_allowance: int = 1 << 20
    cut_age: float = 0.0
    inverse_bias: float = 1.0
    #: whether the decision races its remote plan against a local run (the rows above
    #: the race rows run with ``offload.race`` off, to show each rule on its own)
    race: bool = False
    #: how the link's recent bets came out: their odds over the odds they were given
    bet_odds: float = 1.0


RACE = {"offload": {"race": True}}

CASES = [
    # objective: latency
    Case("slow link runs locally", 10, "local", "fastest", predicted_ms=100.0),
    Case("fast link splits early", 100, "split@a", "fastest"),
    Case("very fast link offloads", 1000, "offload", "fastest"),
    # The same estimate on a link that lately came in at a tenth of it now and then: its
    # transfers take ten times longer on average, as at 100 Mbit/s, where split@a wins.
    Case("a link that collapses now and then costs its expected time", 1000, "split@a",
         "fastest", inverse_bias=10.0),
    Case("input twice the reference doubles the costs", 10, "local", input_bytes=1_200_000,
         predicted_ms=200.0),
    Case("uncertain link is discounted by risk", 100, "local", spread=1.0,
         cfg={"link": {"risk": 1.0}}),
    Case("unknown link is planned at its pessimistic edge", 100, "local", spread=2.08,
         confidence=0.0, cfg={"link": {"risk": 0.0}}),
    # With probe_while_local, running locally while a remote plan could win at the
    # optimistic edge probes the fresh link at once (local runs measure nothing) ...
    Case("probe_while_local: a local run probes a fresh link", 100, "local",
         "running locally leaves the link unmeasured", spread=1.0,
         cfg={"link": {"risk": 1.0}}, explore={"probe_while_local": True}, probe=True),
    # ... but never without the budget for one.
    Case("probe_while_local: no probe beyond the budget", 100, "local", spread=1.0,
         cfg={"link": {"risk": 1.0}}, explore={"probe_while_local": True}, probe_allowance=0),
    Case("same belief, full confidence", 100, "split@a", spread=2.08, confidence=1.0,
         cfg={"link": {"risk": 0.0}}),
    # Throttled, local takes 200 ms and split@b 195 ms: 2.7 % faster, within the default
    # 5 % remote_margin, so local stays; without the margin the work moves out.
    Case("a remote plan must win by the remote margin", 10, "local", "only 2.7% faster",
         device=DeviceState(throttled=True)),
    Case("throttled device moves work out", 10, "split@b", "fastest",
         device=DeviceState(throttled=True), cfg={"link": {"remote_margin": 0.0}}),
    Case("cloud queue time counts", 1000, "local", cloud=CloudState(queue_ms=100.0)),
    # With an SLO, a remote plan must still meet it latency_slo_risk spreads below the
    # estimate. At 200 Mbit/s with spread 1, offload is fastest (~73 ms at the
    # risk-discounted 148 Mbit/s); half a spread below (121 Mbit/s) it takes ~80 ms,
    # within a 90 ms SLO ...
    Case("latency, a remote plan meets the SLO half a spread below the estimate", 200,
         "offload", "fastest", spread=1.0, cfg={"slo_ms": 90.0}),
    # ... but a whole spread below (74 Mbit/s) ~106 ms: split@a, within it at ~87 ms,
    # is taken instead.
    Case("latency, a remote plan that may miss the SLO gives way", 200, "split@a",
         "would miss the 90 ms SLO", spread=1.0,
         cfg={"slo_ms": 90.0, "link": {"latency_slo_risk": 1.0}}),
    # When no plan meets the SLO there, the fastest is taken.
    Case("latency, nothing meets the SLO: fastest", 200, "offload", "fastest", spread=1.0,
         cfg={"slo_ms": 70.0, "link": {"latency_slo_risk": 1.0}}),
    # An upload the executor can give up in time (250 - 110 - 5 ms leave 135 ms to judge
    # it) need not meet the SLO at the edge; with abandon off, split@a (~228 ms three
    # spreads below) is the fastest plan that does.
    Case("latency, an upload that can be given up is held to its prediction", 200,
         "offload", "fastest", spread=1.0,
         cfg={"slo_ms": 250.0, "link": {"latency_slo_risk": 3.0}}),
    Case("latency, abandon off: the SLO holds at the edge", 200, "split@a", "would miss",
         spread=1.0, cfg={"slo_ms": 250.0, "link": {"latency_slo_risk": 3.0},
                          "offload": {"abandon": False}}),
    # rules
    Case("cloud down", 1000, "local", "cloud unavailable", cloud=CloudState(healthy=False)),
    Case("never send raw input", 1000, "split@a", "never_send_raw_input",
         rules={"never_send_raw_input": True}),
    Case("only cuts after a layer", 1000, "split@a", "not after 'pool1'",
         rules={"cuts_after": "pool1"}),
    Case("small inputs stay local", 1000, "local", "below local_below_input_bytes",
         rules={"local_below_input_bytes": 1_000_000}),
    Case("upload cap", 1000, "split@a", "max_upload_bytes",
         rules={"max_upload_bytes": 250_000}),
    Case("power cap", 10, "split@a", "over max_power_w", rules={"max_power_w": 5.0}),
    Case("power cap nobody meets", 10, "offload", "every plan exceeds max_power_w",
         rules={"max_power_w": 0.5}),
    Case("battery below reserve saves energy", 10, "split@b", "below reserve",
         cfg={"slo_ms": 150.0}, rules={"battery_reserve_pct": 20.0},
         device=DeviceState(battery_pct=10.0, on_battery=True)),
    Case("battery above reserve", 10, "local", cfg={"slo_ms": 150.0},
         rules={"battery_reserve_pct": 20.0},
         device=DeviceState(battery_pct=60.0, on_battery=True)),
    Case("battery low but charging", 10, "local", cfg={"slo_ms": 150.0},
         rules={"battery_reserve_pct": 20.0},
         device=DeviceState(battery_pct=10.0, on_battery=False)),
    # objective: energy under an SLO
    Case("energy within SLO", 10, "split@b", "least energy",
         cfg={"objective": "energy", "slo_ms": 150.0}),
    Case("energy, nothing meets SLO", 10, "local", "no plan meets",
         cfg={"objective": "energy", "slo_ms": 90.0}),
    Case("energy, loose SLO", 10, "split@a", "least energy",
         cfg={"objective": "energy", "slo_ms": 300.0}),
    # split@b takes ~115 ms at 10 Mbit/s: within a 120 ms SLO on a certain link ...
    Case("energy, SLO met on a certain link", 10, "split@b", "least energy",
         cfg={"objective": "energy", "slo_ms": 120.0}),
    # ... but not half a spread below the estimate of an uncertain one (6.1 Mbit/s),
    # though it would be at the risk-discounted rate: the SLO holds only for local ...
    # (and since only the uncertainty holds it back, a fresh sample is asked for)
    Case("energy, SLO must hold towards the pessimistic edge", 10, "local",
         "held back only by the link's uncertainty: probing", spread=1.0,
         cfg={"objective": "energy", "slo_ms": 120.0}, probe=True),
    Case("energy, probed when the plan meets the SLO at the estimate itself", 10, "local",
         "held back only by the link's uncertainty: probing", spread=1.0, inverse_bias=2.0,
         cfg={"objective": "energy", "slo_ms": 120.0}, probe=True),
    Case("energy, no probe when the plan misses the SLO even at the estimate", 10, "local",
         "least energy", spread=1.0, cfg={"objective": "energy", "slo_ms": 110.0}),
    Case("energy, probe_while_local: a plan meeting the SLO at the optimistic edge is probed",
         10, "local", "running locally leaves the link unmeasured", spread=1.0,
         cfg={"objective": "energy", "slo_ms": 110.0}, explore={"probe_while_local": True},
         probe=True),
    # ... unless the operator lets the SLO be checked at the risk-discounted rate.
    Case("energy, slo_risk 0 checks at the risk-discounted rate", 10, "split@b",
         "least energy", spread=1.0,
         cfg={"objective": "energy", "slo_ms": 120.0, "link": {"slo_risk": 0.0}}),
    # ... and once the link is stale, it is still probed (and may be explored): a remote
    # plan meets the SLO at the optimistic edge, so the belief can be refreshed.
    Case("energy, stale link still probed", 10, "local", "probing", spread=1.0,
         link_age=100.0, draw=0.9, cfg={"objective": "energy", "slo_ms": 120.0}, probe=True),
    Case("energy, stale link explored", 10, "split@b", "exploring", spread=1.0,
         link_age=100.0, draw=0.01, cfg={"objective": "energy", "slo_ms": 120.0},
         explored=True, probe_allowance=0),
    # An upload the executor can give up in time: at 100 Mbit/s with spread 1.2, offload
    # (~109 ms at the risk-discounted rate) misses a 180 ms SLO at the pessimistic edge
    # (~200 ms), so split@a would be taken; but 180 - 110 (local, plus a tenth) - 5
    # (margin) leaves 65 ms >= abandon_judge_ms (60) to judge the upload and still run
    # locally, so offload is tried: its chance to meet the SLO is ~80 %.
    Case("energy, an upload that can be given up in time is held to the estimate", 100,
         "offload", "chance", spread=1.2, cfg={"objective": "energy", "slo_ms": 180.0}),
    # Just after a dip: the estimate is 12 Mbit/s and offload needs ~34.5 for the SLO, a
    # chance of ~1 % on the belief's own spread. The link's rebound forecast (it has come
    # back to ~40 Mbit/s after its dips lately) makes it ~69 %: offload is tried.
    Case("energy, after a dip the rebound forecast sets the chance", 12, "offload",
         "chance 69%", spread=0.5, rebound=math.log(40 / 12),
         cfg={"objective": "energy", "slo_ms": 180.0}),
    # On a 4 Mbit/s link the upload needs longer to show its rate: a round trip and two
    # 16 KiB slices at the pessimistic ~2.4 Mbit/s, ~128 ms. A 180 ms SLO leaves 65 ms
    # after a local run: too little, whatever the chance; 260 ms leaves 145 ms: enough.
    Case("energy, a slow link cannot show its rate in time: not tried", 4, "split@b",
         "least energy", spread=0.5, rebound=math.log(40 / 4),
         cfg={"objective": "energy", "slo_ms": 180.0}),
    Case("energy, a slow link with time to show its rate: tried", 4, "offload", "chance",
         spread=0.5, rebound=math.log(40 / 4), cfg={"objective": "energy", "slo_ms": 260.0}),
    # The same bet on a link whose recent bets came out at a tenth of the odds given: the
    # 69 % becomes 18 % (odds 2.2 -> 0.22), and a failure's radio time and local run
    # make it dearer than split@b.
    Case("energy, bets that came out worse than their chances make the same one dearer", 12,
         "split@b", "least energy", spread=0.5, rebound=math.log(40 / 12),
         cfg={"objective": "energy", "slo_ms": 180.0}, bet_odds=0.1),
    # ... and on one whose bets came out better: the chance is put up and said.
    Case("energy, bets that came out better than their chances", 12, "offload",
         "chance 87% (forecast 69%, odds x3", spread=0.5, rebound=math.log(40 / 12),
         cfg={"objective": "energy", "slo_ms": 180.0}, bet_odds=3.0),
    Case("energy, after a dip with no rebound learnt the device stays off the link", 12,
         "split@b", "least energy", spread=0.5, cfg={"objective": "energy", "slo_ms": 180.0}),
    Case("energy, abandon off: the pessimistic edge holds", 100, "split@a", "least energy",
         spread=1.2, cfg={"objective": "energy", "slo_ms": 180.0,
                          "offload": {"abandon": False}}, probe=True),
    Case("energy, too little time to judge an upload: the pessimistic edge holds", 100,
         "split@a", "least energy", spread=1.2,
         cfg={"objective": "energy", "slo_ms": 150.0}, probe=True),
    # objective: weighted
    Case("weighted all latency", 10, "local", "weighted",
         cfg={"objective": "weighted", "latency_weight": 1.0}),
    Case("weighted all energy", 10, "split@a", "weighted",
         cfg={"objective": "weighted", "latency_weight": 0.0}),
    # exploration and probing
    # A stale link is explored by a request only when no probe can be sent ...
    Case("stale link explored within regret", 10, "split@a", "exploring", spread=2.0,
         link_age=100.0, draw=0.01, explore={"max_regret": 4.0}, explored=True,
         probe_allowance=0),
    # ... else a probe refreshes it, at a few hundred kilobytes instead of latency ...
    Case("stale link probed rather than explored", 10, "local", "probing", spread=2.0,
         link_age=100.0, draw=0.01, explore={"max_regret": 4.0}, probe=True),
    # ... while stale compute costs (unused for costs_stale_after_s) are explored anyway.
    Case("stale costs explored", 10, "split@a", "exploring", spread=2.0, link_age=100.0,
         draw=0.01, explore={"max_regret": 4.0}, explored=True, cut_age=60.0),
    # split@a is predicted at ~360 ms at the risk-discounted rate (5.5 Mbit/s): within a
    # 400 ms SLO it may be tried, but not when that would miss a 150 ms SLO that local
    # (100 ms) meets.
    Case("exploration within the SLO", 10, "split@a", "exploring", spread=2.0,
         link_age=100.0, draw=0.01, explore={"max_regret": 4.0}, cfg={"slo_ms": 400.0},
         explored=True, cut_age=60.0),
    Case("exploration never trades a deadline", 10, "local", "probing", spread=2.0,
         link_age=100.0, draw=0.01, explore={"max_regret": 4.0}, cfg={"slo_ms": 150.0},
         probe=True, cut_age=60.0),
    Case("exploration bounded by regret", 10, "local", spread=2.0, link_age=100.0,
         draw=0.01, explore={"max_regret": 1.5}, probe=True),
    Case("no exploration when the draw misses", 10, "local", "probing", spread=2.0,
         link_age=100.0, draw=0.9, explore={"max_regret": 3.0}, probe=True),
    Case("stale link probed even when a small split is best", 10, "split@b", "probing",
         device=DeviceState(throttled=True), spread=0.5, link_age=100.0, probe=True,
         cfg={"link": {"remote_margin": 0.0}}),
    Case("fresh estimates are not explored", 10, "local", spread=0.0, draw=0.01,
         explore={"max_regret": 3.0}),
    # Racing (latency objective): at 100 Mbit/s, spread 1, split@a (87 ms at the
    # risk-discounted bandwidth) needs 47 Mbit/s to answer before the 100 ms local run:
    # a 78 % chance, so the device runs the request as well and the first answer is taken.
    Case("race: a remote bet that may lose is raced", 100, "split@a", "with chance 78%",
         spread=1.0, cfg=RACE, race=True, predicted_ms=87.0297),
    # Nearly certain to win (spread 0.1): no need to spend the device's energy.
    Case("race: a sure win is not raced", 100, "split@a", "fastest", spread=0.1, cfg=RACE),
    # At 30 Mbit/s local is best, but split@a still answers first with chance 33 %
    # (offload 16 %, split@b never): raced, at most the local run's time.
    Case("race: a remote plan that may win is raced beside the local run", 30, "split@a",
         "answers first with chance 33%", spread=1.0, cfg=RACE, race=True,
         predicted_ms=100.0),
    Case("race: off, the same link runs locally", 30, "local", spread=1.0,
         cfg={"offload": {"race": False}}),
    # A chance below race_min_chance (5 %) is not worth the radio.
    Case("race: a remote plan with no real chance is not raced", 10, "local", "fastest",
         spread=0.3, cfg=RACE),
    Case("race: a higher race_min_chance leaves the 33 % bet alone", 30, "local",
         spread=1.0, cfg={"offload": {"race": True, "race_min_chance": 0.4}}),
    # Only the latency objective races: the energy objective counts the device's energy
    # (here it bets on split@a, which it can give up in time, without a local run beside).
    Case("race: never under the energy objective", 30, "split@a", "least energy",
         spread=1.0, cfg={"offload": {"race": True}, "objective": "energy",
                          "slo_ms": 400.0}),
    Case("race: never with the cloud down", 30, "local", spread=1.0, cfg=RACE,
         cloud=CloudState(healthy=False)),
    # Privacy: only cuts after "fc" may go; split@b cannot answer within 100 ms at all.
    Case("race: only what the rules allow is raced", 30, "local", spread=1.0, cfg=RACE,
         rules={"cuts_after": "fc"}),
    Case("race: privacy leaves a split to race", 100, "split@a", "racing split@a",
         spread=1.0, cfg=RACE, rules={"never_send_raw_input": True}, race=True),
]


def build(case: Case) -> tuple[PolicyContext, PolicyConfig]:
    cfg = PolicyConfig()
    top = {k: v for k, v in case.cfg.items() if k not in ("link", "offload")}
    if "link" in case.cfg:
        cfg = dataclasses.replace(cfg, link=dataclasses.replace(cfg.link, **case.cfg["link"]))
    cfg = dataclasses.replace(cfg, offload=dataclasses.replace(
        cfg.offload, **{"race": False, **case.cfg.get("offload", {})}))
    cfg = dataclasses.replace(cfg, rules=Rules(**case.rules),
                              explore=dataclasses.replace(cfg.explore, **case.explore), **top)
    ctx = PolicyContext(
        candidates=tuple(dataclasses.replace(c, age_s=case.cut_age) for c in CANDIDATES),
        link=dataclasses.replace(
            link(case.mbps, spread=case.spread, age=case.link_age,
                 confidence=case.confidence, inverse_bias=case.inverse_bias),
            rebound=case.rebound, rebound_down=0.3 if case.rebound else 0.0,
            rebound_up=0.3 if case.rebound else 0.0, bet_odds=case.bet_odds),
        energy=ENERGY, device=case.device, cloud=case.cloud, input_bytes=case.input_bytes,
        reference_input_bytes=600_000, explore_draw=case.draw,
        probe_allowance=case.probe_allowance)
    return ctx, cfg


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    ctx, cfg = build(case)
    d = decide(ctx, cfg)
    assert d.plan == case.expect, d.reason
    assert case.reason in d.reason
    assert d.explored is case.explored
    assert d.probe is case.probe
    assert d.race is case.race
    assert d.to_dict()["race"] is case.race
    # a bet (tried on a chance, given up in time otherwise) carries the forecast's chance
    assert (d.bet_chance is not None) is ("chance" in d.reason and "meets the SLO" in d.reason)
    if case.predicted_ms is not None:
        assert d.predicted_ms == pytest.approx(case.predicted_ms)
    assert decide(ctx, cfg) == d  # pure: the same inputs give the same decision


def test_prediction_arithmetic() -> None:
    ctx, cfg = build(Case("", 10, ""))
    d = decide(ctx, cfg)
    preds = {p.cut_id: p for p in d.predictions}
    # split b at 10 Mbit/s: 80 head + 6.4 up + (20 rtt + 5 tail) + 3.2 down
    b = preds["b"]
    assert b.latency_ms == pytest.approx(80 + 6.4 + 25 + 3.2)
    assert b.energy_mj == pytest.approx(7.5 * 80 + 1.0 * 6.4 + 0.55 * 3.2 + 1.25 * 25)
    assert preds["local"].energy_mj == pytest.approx(750.0)
    assert d.to_dict()["plan"] == "local" and d.deadline_ms == 0.0


def test_a_request_of_another_size_is_costed_by_the_plans_curves() -> None:
    """With size data the request's own dims decide (head and tail factors from the plan's
    cost curves, bytes exact); a tiny input's byte ratio no longer shrinks every cost."""
    ctx, cfg = build(Case("", 100, "", input_bytes=12))
    sized = {"local": (4.0, 1.0, 0, 0), "offload": (1.0, 4.0, 2_400_000, 16_000),
             "a": (4.0, 4.0, 800_000, 16_000), "b": (4.0, 4.0, 32_000, 16_000)}
    d = decide(dataclasses.replace(ctx, sized=sized), cfg)
    preds = {p.cut_id: p for p in d.predictions}
    assert preds["local"].latency_ms == pytest.approx(400.0)
    # split b at 100 Mbit/s: 320 head + 2.56 up + (20 rtt + 20 tail) + 1.28 down
    assert preds["b"].latency_ms == pytest.approx(320 + 2.56 + 40 + 1.28)
    assert preds["offload"].up_bytes == 2_400_000
    # The same request by the byte ratio alone would have looked 50,000 times cheaper.
    old = {p.cut_id: p for p in decide(ctx, cfg).predictions}
    assert old["local"].latency_ms == pytest.approx(100.0 * 12 / 600_000)


def test_every_plan_excluded_but_local_is_still_answered() -> None:
    ctx, cfg = build(Case("", 1000, "", cloud=CloudState(healthy=False)))
    d = decide(ctx, cfg)
    assert d.plan == "local"
    assert all(p.excluded == "cloud unavailable" for p in d.predictions if p.kind != "local")


def test_empty_plan_table_is_an_error() -> None:
    ctx, cfg = build(Case("", 10, ""))
    with pytest.raises(ValueError, match="no candidates"):
        decide(dataclasses.replace(ctx, candidates=()), cfg)


def test_device_state_from_recorded_sysfs() -> None:
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "devices" / "data"
    laptop = DeviceState.from_sysfs(str(data / "x86-laptop"), "MAXN")
    assert laptop == DeviceState("MAXN", 17.0, True, False)
    nano = DeviceState.from_sysfs(str(data / "jetson-nano"))
    assert nano.throttled and nano.battery_pct is None and not nano.on_battery
    # the laptop's state trips the battery reserve rule of the table above
    ctx, cfg = build(Case("", 10, "", cfg={"slo_ms": 150.0},
                          rules={"battery_reserve_pct": 20.0}, device=laptop))
    assert "below reserve" in decide(ctx, cfg).reason


def test_the_chance_to_meet_the_slo_uses_each_side_of_the_belief() -> None:
    from edge.policy._decide import _bandwidth_within, _predict, _slo_chance

    offload = CANDIDATES[1]
    cfg = dataclasses.replace(PolicyConfig(), objective="energy", slo_ms=220.0)

    def chance(mbps: float, spread: float, spread_up: float) -> float:
        ctx = PolicyContext(candidates=CANDIDATES, energy=ENERGY,
                            link=dataclasses.replace(link(mbps, spread=spread),
                                                     spread_up=spread_up),
                            input_bytes=600_000, reference_input_bytes=600_000)
        p = _predict(offload, ctx, cfg, ctx.link.bandwidth_bps)
        return _slo_chance(ctx.link, _bandwidth_within(p, ctx.link.bandwidth_bps, cfg.slo_ms))

    # offload needs ~26.8 Mbit/s for 220 ms (600 kB up, 40 ms of round trip and tail).
    assert chance(26.8, 0.2, 0.2) == pytest.approx(0.5, abs=0.02)
    # Below the estimate only the downside counts, above it only the upside.
    assert chance(40.0, 0.2, 1.0) == pytest.approx(chance(40.0, 0.2, 0.2))
    low, wide = chance(20.0, 0.2, 0.2), chance(20.0, 0.2, 1.0)
    assert low < 0.1 < 0.3 < wide < 0.5
    assert chance(20.0, 0.0, 0.0) == 0.0 and chance(40.0, 0.0, 0.0) == 1.0


def test_a_plan_that_may_be_given_up_is_costed_at_the_bandwidth_the_slo_needs() -> None:
    import re

    from edge.policy._decide import _bandwidth_within, _predict

    ctx, cfg = build(Case("", 12, "", spread=0.5, rebound=math.log(40 / 12),
                          cfg={"objective": "energy", "slo_ms": 180.0}))
    d = decide(ctx, cfg)
    assert d.plan == "offload"
    m = re.search(r"chance (\d+)% .*\(expected (\d+) mJ\)", d.reason)
    assert m, d.reason
    chance, expected = int(m.group(1)) / 100, float(m.group(2))
    offload = next(p for p in d.predictions if p.cut_id == "offload")
    local = next(p for p in d.predictions if p.cut_id == "local")
    # The plan was predicted at the cautious rate (~10 Mbit/s, ~465 ms of radio); when it
    # meets the SLO its upload went at least at the ~34.5 Mbit/s the SLO needs.
    planned_bps = offload.up_bytes * 8 / (offload.up_ms / 1000)
    needed = _bandwidth_within(offload, planned_bps, cfg.slo_ms)
    assert needed == pytest.approx(34.5e6, rel=0.02)
    won = _predict(CANDIDATES[1], ctx, cfg, needed).energy_mj
    assert won < offload.energy_mj / 2
    # A failure holds the radio at most until the device must take over: 180 ms less the
    # local run with its slack and the margin (the upload starts at once: no head).
    give_up_ms = cfg.slo_ms - local.latency_ms * 1.1 - cfg.offload.deadline_margin_ms
    assert cfg.offload.abandon_judge_ms < give_up_ms
    failed = local.energy_mj + ENERGY.tx_w * give_up_ms
    assert expected == pytest.approx(chance * won + (1 - chance) * failed, abs=10)


@dataclass
class Ahead:
    name: str
    mbps: float
    level_mbps: float
    expect: bool
    explore: dict[str, Any] = field(default_factory=dict)
    cloud: CloudState = CloudState()
    probe_allowance: int = 1 << 20


# Whether to probe between requests, for the next one's sake: only when the plan picked at
# the link's usual level uploads more than the one picked at the (dipped) estimate.
AHEAD = [
    Ahead("a dip below a level where a split wins", 10, 100, True),
    Ahead("a dip below a level where offloading wins", 100, 1000, True),
    Ahead("a dip too shallow to change the plan", 10, 12, False),
    Ahead("the link at its level", 100, 100, False),
    Ahead("the link above its level", 1000, 100, False),
    Ahead("the level not known yet", 10, 0, False),
    Ahead("no probe budget left", 10, 100, False, probe_allowance=1024),
    Ahead("probes of no size", 10, 100, False, explore={"probe_bytes": 0}),
    Ahead("the cloud is down", 10, 100, False, cloud=CloudState(healthy=False)),
    Ahead("switched off", 10, 100, False, explore={"lookahead_probe": False}),
]


@pytest.mark.parametrize("case", AHEAD, ids=[c.name for c in AHEAD])
def test_lookahead_probe_table(case: Ahead) -> None:
    from edge.policy import lookahead_probe

    ctx, cfg = build(Case("", case.mbps, "", explore=case.explore, cloud=case.cloud,
                          probe_allowance=case.probe_allowance))
    ctx = dataclasses.replace(ctx, link=dataclasses.replace(
        ctx.link, level_bps=case.level_mbps * 1e6))
    assert lookahead_probe(ctx, cfg) is case.expect
    # It never explores on the request's behalf: the same answer whatever the draw.
    assert lookahead_probe(dataclasses.replace(ctx, explore_draw=0.0), cfg) is case.expect


def test_racing_spends_the_energy_allowance() -> None:
    """A race is run only while the allowance (``[offload] race_energy_budget``) covers
    what it adds: here the radio beside a local run (split@a may answer first)."""
    ctx, cfg = build(Case("", 30, "", spread=1.0, cfg=RACE))
    free = decide(ctx, cfg)
    assert free.race and free.plan == "split@a"
    local = next(p for p in free.predictions if p.cut_id == "local")
    # what the race adds: split@a's transfers on the radio beside the local run
    assert free.race_extra_mj == pytest.approx(free.predicted_mj - local.energy_mj)
    assert 0 < free.race_extra_mj < local.energy_mj
    just = decide(dataclasses.replace(ctx, race_allowance_mj=free.race_extra_mj), cfg)
    assert just.race
    short = decide(dataclasses.replace(ctx, race_allowance_mj=free.race_extra_mj * 0.99), cfg)
    assert not short.race and short.plan == "local"
    assert "not racing split@a" in short.reason and "race_energy_budget" in short.reason
    assert short.race_extra_mj == 0.0


def test_no_race_on_battery_below_the_reserve() -> None:
    ctx, cfg = build(Case("", 30, "", spread=1.0, cfg={**RACE, "slo_ms": 150.0},
                          rules={"battery_reserve_pct": 20.0},
                          device=DeviceState(battery_pct=10.0, on_battery=True)))
    d = decide(ctx, cfg)
    assert not d.race and "below reserve" in d.reason
    on_mains = decide(dataclasses.replace(
        ctx, device=DeviceState(battery_pct=10.0, on_battery=False)), cfg)
    assert on_mains.race


def test_a_provisional_estimate_is_probed_even_while_the_plan_is_remote() -> None:
    """After a leg timed out without saying whether the link or the server was slow (or
    while the estimate rests on a stand-in), the policy checks the link with a probe,
    paid from the energy allowance; also when its plan is the biggest remote one, whose
    next transfer could time out again without measuring anything (issue 25)."""
    for mbps, plan in ((1000, "offload"), (100, "split@a")):
        ctx, cfg = build(Case("", mbps, plan))
        settled = decide(ctx, cfg)
        assert settled.plan == plan and not settled.probe
        doubted = dataclasses.replace(ctx, link=dataclasses.replace(ctx.link,
                                                                    provisional=True))
        d = decide(doubted, cfg)
        assert d.plan == plan and d.probe, d.reason
        assert "link estimate is in question" in d.reason
        # Not when the allowance cannot pay for the probe's radio time.
        broke = decide(dataclasses.replace(doubted, race_allowance_mj=0.0), cfg)
        assert broke.plan == plan and not broke.probe
