"""Property tests of the pure decision function over random contexts and configurations.

Whatever the plan table, the link belief, the device and the settings (within what
``policy.toml`` validation lets through), :func:`decide` answers: it never raises, the
plan it returns is one of the candidates and passes every rule unless no candidate does,
its predicted costs are numbers, and the same inputs give the same decision.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import EnergyModel
from edge.policy import (
    CloudState,
    CutEstimate,
    DeviceState,
    LinkEstimate,
    PolicyConfig,
    PolicyContext,
    Rules,
    decide,
    lookahead_probe,
)
from edge.policy._config import (
    ExploreSettings,
    LinkSettings,
    OffloadSettings,
)

LAYERS = ("conv1", "pool1", "block2", "fc")


def _pos(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


@st.composite
def candidates(draw: st.DrawFn) -> tuple[CutEstimate, ...]:
    age = st.one_of(st.just(math.inf), _pos(0.0, 1e4))
    out = []
    # A plan table always has local (the partitioner puts it there); one without is
    # drawn too, for the fallback that takes the fastest plan.
    if draw(st.integers(0, 9)):
        out.append(CutEstimate("local", "local", draw(_pos(0.0, 5e3)), 0.0, 0, 0,
                               age_s=draw(age), samples=draw(st.integers(0, 50))))
    if draw(st.booleans()):
        out.append(CutEstimate("offload", "offload", 0.0, draw(_pos(0.0, 2e3)),
                               draw(st.integers(0, 20_000_000)), draw(st.integers(0, 1_000_000)),
                               sends_raw_input=True, age_s=draw(age),
                               samples=draw(st.integers(0, 50))))
    for i in range(draw(st.integers(0, 4))):
        layers = frozenset(draw(st.lists(st.sampled_from(LAYERS), max_size=4)))
        out.append(CutEstimate(f"c{i}", "split", draw(_pos(0.0, 5e3)), draw(_pos(0.0, 2e3)),
                               draw(st.integers(0, 20_000_000)), draw(st.integers(0, 1_000_000)),
                               sends_raw_input=draw(st.booleans()), device_layers=layers,
                               age_s=draw(age), samples=draw(st.integers(0, 50))))
    if not out:
        out.append(CutEstimate("local", "local", 1.0, 0.0, 0, 0))
    return tuple(out)


@st.composite
def links(draw: st.DrawFn) -> LinkEstimate:
    bw = draw(_pos(1.0, 1e10))
    return LinkEstimate(
        bandwidth_bps=bw, rtt_s=draw(_pos(0.0, 2.0)), confidence=draw(_pos(0.0, 1.0)),
        spread=draw(_pos(0.0, 4.0)), age_s=draw(st.one_of(st.just(math.inf), _pos(0.0, 1e4))),
        samples=draw(st.integers(0, 100)), headroom=draw(_pos(0.0, 3.0)),
        inverse_bias=draw(_pos(0.1, 50.0)), spread_up=draw(_pos(0.0, 4.0)),
        rebound=draw(_pos(-3.0, 3.0)), rebound_down=draw(_pos(0.0, 4.0)),
        rebound_up=draw(_pos(0.0, 4.0)),
        level_bps=draw(st.one_of(st.just(0.0), _pos(1.0, 1e10))),
    )


@st.composite
def contexts(draw: st.DrawFn) -> PolicyContext:
    energy = EnergyModel(active_w=draw(_pos(0.1, 60.0)), idle_w=draw(_pos(0.0, 10.0)),
                         tx_w=draw(_pos(0.0, 5.0)), rx_w=draw(_pos(0.0, 5.0)),
                         radio_idle_w=draw(_pos(0.0, 1.0)))
    battery = draw(st.one_of(st.none(), _pos(0.0, 100.0)))
    device = DeviceState(battery_pct=battery, on_battery=draw(st.booleans()),
                         throttled=draw(st.booleans()), local_queue_ms=draw(_pos(0.0, 1e3)))
    cloud = CloudState(healthy=draw(st.booleans()), queue_ms=draw(_pos(0.0, 1e3)))
    return PolicyContext(
        candidates=draw(candidates()), link=draw(links()), energy=energy, device=device,
        cloud=cloud, input_bytes=draw(st.integers(0, 10_000_000)),
        reference_input_bytes=draw(st.integers(0, 10_000_000)),
        explore_draw=draw(_pos(0.0, 1.0)), probe_allowance=draw(st.integers(0, 4 << 20)),
        race_allowance_mj=draw(st.one_of(st.just(math.inf), _pos(-100.0, 1e4))),
    )


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    objective = draw(st.sampled_from(("latency", "energy", "weighted")))
    slo = draw(st.one_of(st.just(0.0), _pos(1.0, 5e3)))
    if objective == "energy" and slo <= 0:  # policy.toml refuses it
        slo = draw(_pos(1.0, 5e3))
    rules = Rules(
        never_send_raw_input=draw(st.booleans()),
        cuts_after=draw(st.sampled_from(("",) + LAYERS)),
        local_below_input_bytes=draw(st.integers(0, 2_000_000)),
        max_upload_bytes=draw(st.integers(0, 5_000_000)),
        battery_reserve_pct=draw(_pos(0.0, 100.0)),
        max_power_w=draw(st.one_of(st.just(0.0), _pos(0.01, 30.0))),
    )
    link = replace(LinkSettings(), risk=draw(_pos(0.0, 3.0)), slo_risk=draw(_pos(0.0, 3.0)),
                   latency_slo_risk=draw(_pos(0.0, 3.0)), remote_margin=draw(_pos(0.0, 1.0)))
    explore = replace(ExploreSettings(), rate=draw(_pos(0.0, 1.0)),
                      stale_after_s=draw(_pos(0.0, 100.0)),
                      max_regret=draw(_pos(1.0, 5.0)),
                      probe_bytes=draw(st.integers(0, 1 << 20)),
                      probe_while_local=draw(st.booleans()),
                      lookahead_probe=draw(st.booleans()))
    offload = replace(OffloadSettings(), abandon=draw(st.booleans()),
                      abandon_judge_ms=draw(_pos(0.0, 500.0)),
                      abandon_min_chance=draw(_pos(0.0, 1.0)), race=draw(st.booleans()),
                      race_min_chance=draw(_pos(0.0, 0.5)),
                      deadline_margin_ms=draw(_pos(0.0, 50.0)))
    return PolicyConfig(objective=objective, slo_ms=slo, latency_weight=draw(_pos(0.0, 1.0)),
                        rules=rules, link=link, explore=explore, offload=offload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=contexts(), cfg=configs())
def test_decide_never_raises_returns_an_allowed_plan_and_is_deterministic(
        ctx: PolicyContext, cfg: PolicyConfig) -> None:
    d = decide(ctx, cfg)
    ids = {c.cut_id: c for c in ctx.candidates}
    assert d.cut_id in ids
    assert d.kind == ids[d.cut_id].kind
    preds = {p.cut_id: p for p in d.predictions}
    assert set(preds) == set(ids)
    passed = [p for p in d.predictions if not p.excluded]
    if passed:
        # the chosen plan passed every rule (a race's remote leg included)
        assert not preds[d.cut_id].excluded, (d.plan, preds[d.cut_id].excluded)
    if d.race:
        assert d.kind != "local"
        assert ctx.cloud.healthy
        assert 0.0 <= d.race_extra_mj <= ctx.race_allowance_mj
    assert not math.isnan(d.predicted_ms) and d.predicted_ms >= 0
    assert not math.isnan(d.predicted_mj) and d.predicted_mj >= 0
    assert isinstance(d.reason, str) and d.reason
    # deterministic: the same inputs, the same decision, down to the words
    again = decide(ctx, cfg)
    assert again == d
    assert again.to_dict() == d.to_dict()
    assert again.predictions == d.predictions
    # the between-requests probe check stands on the same function
    assert lookahead_probe(ctx, cfg) == lookahead_probe(ctx, cfg)


@settings(max_examples=60, deadline=None)
@given(ctx=contexts(), cfg=configs())
def test_an_unhealthy_cloud_always_runs_locally(ctx: PolicyContext, cfg: PolicyConfig) -> None:
    if not any(c.kind == "local" for c in ctx.candidates):
        ctx = replace(ctx, candidates=ctx.candidates + (
            CutEstimate("local", "local", 10.0, 0.0, 0, 0),))
    d = decide(replace(ctx, cloud=CloudState(healthy=False)), cfg)
    assert d.kind == "local" and not d.race and not d.probe


def test_local_fastest_but_late_and_a_remote_plan_kept_names_the_local_plan() -> None:
    """The crash of issue 25: under the latency objective with an SLO, a remote plan meets
    the SLO at the pessimistic edge (the link's expected rate is below that edge, so its
    prediction is the slower one) while local is predicted faster but late. The reason
    then compares with local, which has no pessimistic-edge figure."""
    energy = EnergyModel(active_w=7.5, idle_w=1.25, tx_w=1.0, rx_w=1.0)
    cands = (CutEstimate("local", "local", 500.0, 0.0, 0, 0, age_s=0.0, samples=5),
             CutEstimate("offload", "offload", 0.0, 10.0, 1_000_000, 4000,
                         sends_raw_input=True, age_s=0.0, samples=5))
    # 80 Mbit/s believed, spread 0.1; but transfers lately took 5x their estimate on
    # average (inverse_bias 5): offload is predicted at 16 Mbit/s (~530 ms, slower than
    # local's 500), and at the edge half a spread below the estimate (~76 Mbit/s) at
    # ~135 ms, within the SLO that local misses. It raised KeyError: 'local'.
    lk = LinkEstimate(80e6, 0.02, 1.0, 0.1, 0.0, 10, inverse_bias=5.0)
    ctx = PolicyContext(cands, lk, energy, input_bytes=1_000_000,
                        reference_input_bytes=1_000_000)
    d = decide(ctx, PolicyConfig(slo_ms=400.0))
    assert d.plan == "offload"
    assert "local is predicted faster (500 ms) but would miss the 400 ms SLO (500 ms)" \
        in d.reason, d.reason
