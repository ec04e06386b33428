from __future__ import annotations

import dataclasses
import math

import pytest

from edge.policy import LinkEstimator


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_harmonic_mean_resists_a_lucky_burst() -> None:
    clock = Clock()
    est = LinkEstimator(window=5, prior_rtt_s=0.0, clock=clock)
    # four transfers at 8 Mbit/s (1 MB per second) and one burst at 80 Mbit/s
    for seconds in (1.0, 1.0, 1.0, 1.0, 0.1):
        est.observe_transfer(1_000_000, 0, seconds)
    e = est.estimate()
    arithmetic = (4 * 8e6 + 80e6) / 5
    assert e.bandwidth_bps == pytest.approx(5 / (4 / 8e6 + 1 / 80e6), rel=1e-6)
    assert e.bandwidth_bps < 0.5 * arithmetic
    assert e.samples == 5 and e.confidence == pytest.approx(1.0)


def test_window_forgets_old_link() -> None:
    clock = Clock()
    est = LinkEstimator(window=3, prior_rtt_s=0.0, clock=clock)
    for _ in range(3):
        est.observe_transfer(1_000_000, 0, 0.16)  # 50 Mbit/s
    for _ in range(3):
        est.observe_transfer(1_000_000, 0, 8.0)  # 1 Mbit/s
    assert est.estimate().bandwidth_bps == pytest.approx(1e6)


def test_rtt_from_small_transfers_and_subtracted_from_large() -> None:
    clock = Clock()
    est = LinkEstimator(window=4, prior_rtt_s=0.2, clock=clock)
    for rtt in (0.05, 0.04, 0.04, 0.3):  # one stalled probe does not move the median
        est.observe_rtt(rtt)
    assert est.estimate().rtt_s == pytest.approx(0.04)
    # 1 MB in 0.04 s RTT + 0.2 s server + 0.8 s serialisation -> 10 Mbit/s
    est.observe_transfer(1_000_000, 0, 1.04, server_s=0.2)
    assert est.estimate().bandwidth_bps == pytest.approx(10e6, rel=1e-6)


def test_confidence_decays_without_traffic_and_spread_widens() -> None:
    clock = Clock()
    est = LinkEstimator(window=3, half_life_s=10.0, prior_rtt_s=0.0, clock=clock)
    assert est.estimate().confidence == 0.0 and math.isinf(est.estimate().age_s)
    for _ in range(3):
        est.observe_transfer(500_000, 0, 0.5)
    fresh = est.estimate()
    clock.t = 10.0
    old = est.estimate()
    assert old.confidence == pytest.approx(fresh.confidence / 2)
    assert old.age_s == 10.0
    assert old.spread > fresh.spread
    assert old.low_bps < fresh.low_bps <= fresh.bandwidth_bps <= fresh.high_bps < old.high_bps


def test_probe_budget_refills() -> None:
    clock = Clock()
    est = LinkEstimator(probe_budget_bytes=100_000, probe_refill_s=10.0, clock=clock)
    assert est.probe_allowance() == 100_000
    assert est.spend_probe(80_000)
    assert not est.spend_probe(40_000)  # not enough left: nothing is taken
    assert est.probe_allowance() == 20_000
    clock.t = 2.0
    assert est.probe_allowance() == 40_000
    clock.t = 100.0
    assert est.probe_allowance() == 100_000


def test_reset_forgets_and_window_validated() -> None:
    est = LinkEstimator(prior_bandwidth_bps=3e6)
    est.observe_transfer(1_000_000, 0, 0.1)
    est.reset()
    assert est.estimate().bandwidth_bps == 3e6 and est.estimate().samples == 0
    with pytest.raises(ValueError, match="window"):
        LinkEstimator(window=0)


def test_censored_transfer_only_lowers_the_estimate() -> None:
    clock = Clock()
    est = LinkEstimator(window=4, prior_rtt_s=0.0, clock=clock)
    est.observe_transfer(1_000_000, 0, 0.8)  # 10 Mbit/s
    est.observe_censored(1_000_000, 0.4)  # gave up after 0.4 s: says only "<= 20 Mbit/s"
    assert est.estimate().bandwidth_bps == pytest.approx(10e6)
    est.observe_censored(1_000_000, 4.0)  # not done after 4 s: at most 2 Mbit/s
    assert est.estimate().bandwidth_bps == pytest.approx(2 / (1 / 10e6 + 1 / 2e6))


def test_rtt_dominated_transfer_is_only_a_lower_bound() -> None:
    clock = Clock()
    est = LinkEstimator(window=4, prior_rtt_s=0.05, clock=clock)
    est.observe_transfer(1_000_000, 0, 0.05 + 4.0)  # 2 Mbit/s, clearly serialisation-bound
    assert est.estimate().bandwidth_bps == pytest.approx(2e6)
    # 64 kB in 60 ms with a 50 ms RTT: the payload time is too small to measure, but the
    # link moved 8.7 Mbit/s at least: the estimate rises to that bound
    est.observe_transfer(64_000, 1_000, 0.06)
    assert est.estimate().bandwidth_bps > 2e6
    before = est.estimate().bandwidth_bps
    est.observe_transfer(5_000, 0, 0.055)  # a bound below the estimate changes nothing
    assert est.estimate().bandwidth_bps == before
    clock.t = 5.0
    est.observe_rtt(0.05)  # a ping does not refresh bandwidth confidence
    assert est.estimate().age_s == 5.0


def test_rtt_dominated_transfers_refresh_or_correct_the_belief() -> None:
    clock = Clock()
    est = LinkEstimator(window=4, half_life_s=10.0, prior_rtt_s=0.05, clock=clock)
    est.observe_transfer(2_000_000, 0, 0.05 + 0.4)  # 40 Mbit/s
    clock.t = 30.0
    stale = est.estimate()
    assert stale.confidence < 0.2
    # 20 kB in 54 ms: 4 ms of serialising at 40 Mbit/s, too little to tell anything
    est.observe_transfer(20_000, 0, 0.054)
    assert est.estimate().age_s == 30.0
    # 100 kB in 72 ms: 20 ms of serialising at 40 Mbit/s plus the round trip, as believed
    est.observe_transfer(100_000, 0, 0.072)
    fresh = est.estimate()
    assert fresh.age_s == 0.0 and fresh.bandwidth_bps == stale.bandwidth_bps
    # the same 100 kB now takes 450 ms: well over the belief, the link got slower
    est.observe_transfer(100_000, 0, 0.45)
    assert est.estimate().bandwidth_bps < 0.5 * fresh.bandwidth_bps


def test_a_transfer_far_faster_than_believed_raises_the_estimate() -> None:
    clock = Clock()
    est = LinkEstimator(window=4, prior_rtt_s=0.04, clock=clock)
    # 600 kB in 0.04 s RTT + 0.2 s: a 24 Mbit/s belief
    est.observe_transfer(600_000, 0, 0.24)
    assert est.estimate().bandwidth_bps == pytest.approx(24e6)
    # 100 kB would take 33 ms at 24 Mbit/s; it took 2 ms past the round trip: too little
    # to measure, but the link is clearly faster. It shows what 100 kB can resolve over a
    # quarter round trip (80 Mbit/s), so the estimate rises towards it.
    est.observe_transfer(100_000, 0, 0.042)
    e = est.estimate()
    assert e.bandwidth_bps == pytest.approx(2 / (1 / 24e6 + 1 / 80e6))
    # That sample is a bound: the optimistic edge gets room above it (exploration may try
    # a plan only a fast link favours); the pessimistic edge does not move.
    assert e.headroom > 0 and e.high_bps == pytest.approx(
        e.bandwidth_bps * math.exp(e.spread) * 4.0)
    assert e.low_bps == pytest.approx(e.bandwidth_bps * math.exp(-e.spread))
    # at about the believed rate (34 ms past the round trip), nothing is added
    est.observe_transfer(100_000, 0, 0.074)
    assert est.estimate().bandwidth_bps == pytest.approx(e.bandwidth_bps)
    # a small transfer that slipped through in a burst proves nothing about the rate
    before = est.estimate().bandwidth_bps
    est.observe_transfer(8_000, 0, 0.0405)
    assert est.estimate().bandwidth_bps == pytest.approx(before)
    # a transfer that resolves the rate is a real sample again: no headroom
    est.observe_transfer(2_000_000, 0, 0.04 + 0.2)  # 80 Mbit/s
    assert est.estimate().headroom == 0.0


def test_after_a_quiet_spell_a_fresh_sample_outweighs_old_ones() -> None:
    clock = Clock()
    est = LinkEstimator(window=6, half_life_s=10.0, prior_rtt_s=0.04, clock=clock)
    for _ in range(4):
        est.observe_transfer(2_000_000, 0, 0.04 + 0.4)  # 40 Mbit/s
    assert est.estimate().bandwidth_bps == pytest.approx(40e6)
    clock.t = 50.0  # five half-lives later: each old sample weighs 1/32 of the new one
    est.observe_transfer(2_500_000, 0, 0.04 + 0.1)  # 200 Mbit/s
    weights = [1.0] + [1 / 32] * 4
    expected = sum(weights) / (1 / 200e6 + 4 / 32 / 40e6)
    assert est.estimate().bandwidth_bps == pytest.approx(expected)
    assert est.estimate().bandwidth_bps > 3 * 40e6  # an unweighted mean would say 48
    # Samples close together still count alike: one lucky burst is outvoted.
    for _ in range(4):
        est.observe_transfer(2_500_000, 0, 0.04 + 0.1)
    est.observe_transfer(2_500_000, 0, 0.04 + 0.01)  # 2 Gbit/s
    assert est.estimate().bandwidth_bps < 1.3 * 200e6


def test_resolving_bytes_is_half_a_round_trip_at_the_believed_rate() -> None:
    clock = Clock()
    est = LinkEstimator(prior_rtt_s=0.04, clock=clock)
    est.observe_transfer(2_000_000, 0, 0.04 + 0.4)  # 40 Mbit/s
    assert est.resolving_bytes() == int(40e6 * 0.02 / 8)  # 100 kB
    est.observe_transfer(2_000_000, 0, 0.04 + 8.0)  # now 2 Mbit/s or so: floor of 64 KiB
    assert est.resolving_bytes() == 64 * 1024


def test_forecast_errors_set_the_spread_and_the_expected_bandwidth() -> None:
    clock = Clock()
    est = LinkEstimator(window=6, half_life_s=2.0, prior_rtt_s=0.0, clock=clock)
    # A steady 8 Mbit/s link (1 MB per second): the estimate never misses.
    for i in range(8):
        clock.t = 2.0 * i
        est.observe_transfer(1_000_000, 0, 1.0)
    steady = est.estimate()
    assert steady.bandwidth_bps == pytest.approx(8e6)
    assert steady.spread == pytest.approx(0.05)  # the floor: no miss seen
    assert steady.inverse_bias == pytest.approx(1.0)
    # One outage (a tenth of the rate), then the link as before.
    clock.t = 16.0
    est.observe_transfer(1_000_000, 0, 10.0)
    for i in range(3):
        clock.t = 18.0 + 2.0 * i
        est.observe_transfer(1_000_000, 0, 1.0)
    after = est.estimate()
    # The spread is a quantile of the misses: one outage among eleven misses does not
    # move the one-sigma edge far ...
    assert after.spread < 0.6
    # ... but it does raise the expected transfer time: ~1/11 of the outage's 10x.
    assert 1.5 < after.inverse_bias < 2.5
    assert after.expected_bps < after.bandwidth_bps / 1.5


def test_the_upward_spread_is_how_far_above_the_estimate_samples_came() -> None:
    clock = Clock()
    est = LinkEstimator(window=2, half_life_s=2.0, prior_rtt_s=0.0, clock=clock)
    # A link that alternates between 4 and 16 Mbit/s: after a slow sample the next one
    # comes in far above the estimate, after a fast one far below.
    for i in range(12):
        clock.t = 2.0 * i
        est.observe_transfer(1_000_000, 0, 2.0 if i % 2 else 0.5)
    e = est.estimate()
    assert e.spread > 0.3 and e.spread_up > 0.3
    # A steady link: neither side has any spread beyond the floor.
    steady = LinkEstimator(window=2, half_life_s=2.0, prior_rtt_s=0.0, clock=clock)
    for i in range(8):
        clock.t = 100.0 + 2.0 * i
        steady.observe_transfer(1_000_000, 0, 1.0)
    assert steady.estimate().spread_up == pytest.approx(0.05)


def test_a_rate_measured_directly_is_a_sample() -> None:
    clock = Clock()
    est = LinkEstimator(window=3, prior_rtt_s=0.0, clock=clock)
    est.observe_transfer(1_000_000, 0, 1.0)  # 8 Mbit/s
    clock.t = 1.0
    est.observe_rate(2e6)
    assert est.estimate().bandwidth_bps == pytest.approx(2 / (1 / 8e6 + 1 / 2e6), rel=0.05)
    est.observe_rate(float("nan"))
    est.observe_rate(0.0)
    assert est.total_samples == 2
    # A rate above the estimate may be the path's buffers filling at the start of the
    # upload: it refreshes the belief but does not raise it.
    before = est.estimate().bandwidth_bps
    clock.t = 30.0
    assert est.estimate().confidence < 0.5
    est.observe_rate(50e6)
    after = est.estimate()
    assert after.bandwidth_bps == before and after.confidence == 1.0
    assert est.total_samples == 2


def test_a_rate_reading_stands_in_until_a_transfer_measures_the_link() -> None:
    clock = Clock()
    est = LinkEstimator(window=6, prior_rtt_s=0.0, clock=clock)
    for i in range(6):
        clock.t = float(i)
        est.observe_transfer(5_000_000, 0, 1.0)  # 40 Mbit/s
    assert est.estimate().inverse_bias == pytest.approx(1.0)
    # A given-up upload read the link of one bad instant: far below the estimate.
    clock.t = 6.0
    est.observe_rate(2e6)
    est.observe_rate(3e6)
    low = est.estimate()
    assert low.bandwidth_bps < 15e6  # the estimate takes them at once
    # ... but as forecast errors each counts a factor of e at most (taken whole, 2 Mbit/s
    # against 40 would make the expected transfer time of the next sixteen about 3x)
    assert list(est._misses.errors)[-2:] == pytest.approx([-1.0, -1.0])
    assert low.inverse_bias == pytest.approx((5 + 2 * math.e) / 7, rel=0.01)
    # The next measured transfer replaces both readings in the window.
    clock.t = 7.0
    est.observe_transfer(5_000_000, 0, 1.0)
    assert est.estimate().bandwidth_bps == pytest.approx(40e6, rel=0.01)


def test_a_censored_bound_stands_in_and_keeps_the_measured_level_in_reach() -> None:
    """A timed-out upload's bound (issue 25) is folded in as a rate reading is: taken at
    once, a forecast error of a factor of e at most, replaced by the next measured
    transfer; and while it stands the estimate is provisional and its optimistic edge
    still reaches what the transfers measured, so a probe or a bigger plan can show the
    link back."""
    clock = Clock()
    est = LinkEstimator(window=6, prior_rtt_s=0.0, clock=clock)
    for _ in range(6):  # (at one instant: equal weights)
        est.observe_transfer(25_000_000, 0, 1.0)  # 200 Mbit/s
    assert not est.estimate().provisional
    # 125 kB handed over in the 0.5 s before the deadline: at most 2 Mbit/s.
    assert est.observe_censored(125_000, 0.5)
    low = est.estimate()
    assert low.bandwidth_bps == pytest.approx(6 / (5 / 200e6 + 1 / 2e6), rel=1e-6)
    assert low.provisional
    assert list(est._misses.errors)[-1] == pytest.approx(-1.0)  # not log(2 / 200) = -4.6
    assert low.inverse_bias == pytest.approx((5 + math.e) / 6, rel=1e-6)  # errors 0 x5, -1
    assert low.high_bps >= 200e6 * 0.99
    # Too few bytes, or no time past the round trip, say nothing.
    assert not est.observe_censored(1_000, 0.5)
    assert est.estimate() == low
    # The next measured transfer replaces the bound and settles the estimate.
    clock.t = 7.0
    est.observe_transfer(25_000_000, 0, 1.0)
    settled = est.estimate()
    assert settled.bandwidth_bps == pytest.approx(200e6, rel=1e-6)
    assert not settled.provisional and settled.headroom == 0.0


def test_a_doubt_moves_nothing_until_a_transfer_settles_it() -> None:
    """A leg that timed out after its whole upload went cannot tell a slow link from a
    slow server: the estimate stays what the transfers measured, only provisional."""
    clock = Clock()
    est = LinkEstimator(window=6, prior_rtt_s=0.01, clock=clock)
    for i in range(6):
        clock.t = float(i)
        est.observe_transfer(25_000_000, 0, 1.01)  # 200 Mbit/s
    before = est.estimate()
    est.doubt()
    assert est.estimate() == dataclasses.replace(before, provisional=True)
    assert est.total_samples == 6
    clock.t = 6.0
    est.observe_transfer(2_500_000, 0, 1.01)  # the link did drop: 20 Mbit/s, measured
    after = est.estimate()
    assert not after.provisional and after.bandwidth_bps < before.bandwidth_bps
    est.doubt()
    est.reset()
    assert not est.estimate().provisional


def test_a_timeout_after_the_whole_upload_doubts_first_and_bounds_when_it_recurs() -> None:
    """``observe_timeout``: one leg that waited past its deadline after its whole upload
    went may have waited on the server: a doubt, nothing moved. Another before any
    transfer measured the link: the bytes had at most the time the server's expected
    part (``rest_s``) leaves, a stand-in bound."""
    clock = Clock()
    est = LinkEstimator(window=6, prior_rtt_s=0.01, clock=clock)
    for _ in range(6):
        est.observe_transfer(25_000_000, 0, 1.01)  # 200 Mbit/s
    before = est.estimate()
    assert est.observe_timeout(100_000, 0.5, rest_s=0.1) == "doubt"
    assert est.estimate() == dataclasses.replace(before, provisional=True)
    # Again, unsettled: 100 kB in the 0.4 s the server's part leaves: at most 2 Mbit/s.
    assert est.observe_timeout(100_000, 0.5, rest_s=0.1) == "bound"
    low = est.estimate()
    assert low.bandwidth_bps == pytest.approx(6 / (5 / 200e6 + 1 / 2e6), rel=1e-6)
    assert low.provisional and list(est._misses.errors)[-1] == pytest.approx(-1.0)
    # A measured transfer settles it; the next timeout is a first one again.
    est.observe_transfer(25_000_000, 0, 1.01)
    assert not est.estimate().provisional
    settled = est.estimate()
    assert est.observe_timeout(100_000, 0.5, rest_s=0.1) == "doubt"
    assert est.estimate().bandwidth_bps == settled.bandwidth_bps
    # Without the server's expected part, or with no time left beyond it, or a bound the
    # estimate already meets: a doubt still.
    assert est.observe_timeout(100_000, 0.5) == "doubt"
    assert est.observe_timeout(100_000, 0.5, rest_s=0.6) == "doubt"
    assert est.observe_timeout(100_000_000, 0.5, rest_s=0.1) == "doubt"
    assert est.estimate().bandwidth_bps == settled.bandwidth_bps


def test_a_stand_in_long_after_the_measured_samples_needs_no_level_to_reach() -> None:
    """The measured samples' weights vanish next to a stand-in that came very long after
    them (a replay's clock jumps): the estimate is the stand-in's, with no extra room."""
    clock = Clock()
    est = LinkEstimator(window=6, half_life_s=10.0, prior_rtt_s=0.0, clock=clock)
    for _ in range(3):
        est.observe_transfer(25_000_000, 0, 1.0)  # 200 Mbit/s
    clock.t = 1e6
    assert est.observe_censored(125_000, 0.5)  # at most 2 Mbit/s
    e = est.estimate()
    assert e.bandwidth_bps == pytest.approx(2e6) and e.provisional and e.headroom == 0.0


def test_the_optimistic_edge_widens_once_the_link_is_quiet_for_long() -> None:
    clock = Clock()
    est = LinkEstimator(window=6, half_life_s=10.0, prior_rtt_s=0.0, clock=clock)
    _feed(est, clock, [60.0] * 15 + [3.0])
    e = est.estimate()
    # A few quiet seconds (a device running locally between probes) do not widen it
    # beyond the belief's own decay: probing a slow link on every request would cost more
    # radio time than it saves ...
    clock.t += 4.0
    short = est.estimate()
    assert short.high_bps == pytest.approx(
        short.bandwidth_bps * math.exp(short.spread + short.headroom))
    # ... but with nothing heard for minutes, the optimistic edge keeps widening, so that
    # one slow reading cannot keep every remote plan hopeless, and the link unprobed.
    clock.t += 116.0
    quiet = est.estimate()
    assert quiet.high_bps > 8 * e.high_bps
    assert quiet.high_bps > 8 * quiet.bandwidth_bps * math.exp(quiet.spread)


def _feed(est: LinkEstimator, clock: Clock, mbps: list[float]) -> None:
    for v in mbps:
        clock.t += 2.0
        est.observe_transfer(int(v * 1e6 / 8), 0, 1.0)  # one second of the link at v


def test_after_a_short_dip_the_rebound_expects_the_link_back() -> None:
    clock = Clock()
    # A 30 Mbit/s link with one-sample dips to 5 Mbit/s every sixth sample: after each
    # dip the harmonic mean sits far below the link's level, and the next sample is back.
    dipping = LinkEstimator(window=6, half_life_s=10.0, prior_rtt_s=0.0, clock=clock)
    _feed(dipping, clock, ([30.0] * 5 + [5.0]) * 5)
    e = dipping.estimate()
    assert e.bandwidth_bps < 20e6  # the cautious estimate, pulled down by the dip
    assert e.rebound > 0.3  # the forecast: most of the way back
    assert e.bandwidth_bps * math.exp(e.rebound) == pytest.approx(30e6, rel=0.2)
    assert e.chance_at_least(25e6) > 0.5
    # A link whose drops last (30 and 10 Mbit/s in long stretches): just after a drop
    # the estimate sits as far below the level, but the link is not coming back.
    clock.t = 1000.0
    lasting = LinkEstimator(window=6, half_life_s=10.0, prior_rtt_s=0.0, clock=clock)
    _feed(lasting, clock, [30.0] * 10 + [10.0] * 10 + [30.0] * 10 + [10.0] * 2)
    f = lasting.estimate()
    assert f.bandwidth_bps < 20e6
    assert f.rebound < 0.1  # the fit says 0; what is left is the prior's small share
    # (It has come back up threefold before, so the chance is not nil; but it is less.)
    assert f.chance_at_least(25e6) < e.chance_at_least(25e6) - 0.2
    # Until the link's level is known there is no rebound ...
    fresh = LinkEstimator(window=6, prior_rtt_s=0.0, clock=clock)
    _feed(fresh, clock, [30.0, 30.0, 5.0])
    g = fresh.estimate()
    assert (g.rebound, g.rebound_down, g.rebound_up) == (0.0, 0.0, 0.0)
    # ... and until enough misses are known, the prior's (half the gap back, the
    # residual spreads not yet known: the belief's own apply).
    _feed(fresh, clock, [30.0])
    g = fresh.estimate()
    level = math.log(30e6)
    assert g.rebound == pytest.approx(0.5 * (level - math.log(g.bandwidth_bps)), rel=0.05)
    assert (g.rebound_down, g.rebound_up) == (0.0, 0.0)
    dipping.reset()
    assert dipping.estimate().rebound == 0.0


def test_the_chance_of_a_rate_is_read_around_the_rebound_forecast() -> None:
    from edge.policy._link import LinkEstimate

    e = LinkEstimate(10e6, 0.02, 1.0, 0.2, 0.0, 6, spread_up=0.4)
    assert e.chance_at_least(10e6) == pytest.approx(0.5)
    # Without a rebound: below the estimate the downward spread, above it the upward.
    assert e.chance_at_least(10e6 * math.exp(-0.2)) == pytest.approx(0.841, abs=0.01)
    assert e.chance_at_least(10e6 * math.exp(0.4)) == pytest.approx(0.159, abs=0.01)
    # With one, the centre moves and the forecast's own spreads apply.
    r = LinkEstimate(10e6, 0.02, 1.0, 0.2, 0.0, 6, spread_up=0.4, rebound=math.log(2.0),
                     rebound_down=0.1, rebound_up=0.3)
    assert r.chance_at_least(20e6) == pytest.approx(0.5)
    assert r.chance_at_least(20e6 * math.exp(-0.1)) == pytest.approx(0.841, abs=0.01)
    assert r.chance_at_least(20e6 * math.exp(0.3)) == pytest.approx(0.159, abs=0.01)
    certain = LinkEstimate(10e6, 0.02, 1.0, 0.0, 0.0, 6)
    assert certain.chance_at_least(9e6) == 1.0 and certain.chance_at_least(11e6) == 0.0


def test_the_level_is_the_median_of_the_recent_samples_once_known() -> None:
    clock = Clock()
    est = LinkEstimator(window=6, prior_rtt_s=0.0, clock=clock)
    _feed(est, clock, [30.0, 40.0, 5.0])
    assert est.estimate().level_bps == 0.0  # too few samples to say what is usual
    _feed(est, clock, [50.0])
    # the middle two (30 and 40) meet at their geometric mean: the median is taken in logs
    assert est.estimate().level_bps == pytest.approx(math.sqrt(30e6 * 40e6), rel=0.01)
    _feed(est, clock, [4.0])
    e = est.estimate()
    # A slow sample pulls the harmonic mean well down; the median moves one sample.
    assert e.bandwidth_bps < 15e6
    assert e.level_bps == pytest.approx(30e6, rel=0.01)


def test_bets_put_the_forecasts_chances_right_by_how_they_came_out() -> None:
    """Hand-computed: the odds the bets came out at over the odds they were given, one
    pseudo-bet each way on both sides; a chance's odds are scaled by it, 0 and 1 stay."""
    from edge.policy._bets import BetRecord, calibrate

    rec = BetRecord(window=4)
    assert rec.odds_factor() == 1.0
    for _ in range(4):  # four bets given 30 %, all lost: (0+1)/(4+1) over (1.2+1)/(2.8+1)
        rec.record(0.3, False)
    assert rec.odds_factor() == pytest.approx(0.2 / (2.2 / 3.8))
    # the window keeps the last four: two wins at 50 % push two of the losses out
    rec.record(0.5, True)
    rec.record(0.5, True)
    assert len(rec) == 4
    assert rec.odds_factor() == pytest.approx((3 / 3) / (2.6 / 3.4))
    # bets that came out as stated leave the odds alone
    fair = BetRecord(window=4)
    for won in (True, False, True, False):
        fair.record(0.5, won)
    assert fair.odds_factor() == pytest.approx(1.0)
    assert calibrate(0.5, 0.25) == pytest.approx(0.2)  # odds 1 -> 0.25
    assert calibrate(0.8, 2.0) == pytest.approx(8 / 9)  # odds 4 -> 8
    assert calibrate(0.0, 5.0) == 0.0 and calibrate(1.0, 0.01) == 1.0
    with pytest.raises(ValueError, match="chance must be within 0..1"):
        rec.record(1.5, True)
    with pytest.raises(ValueError, match="window must be >= 1"):
        BetRecord(window=0)


def test_the_link_estimate_carries_its_bets_and_a_reset_forgets_them() -> None:
    est = LinkEstimator(clock=lambda: 0.0)
    assert est.estimate().bet_odds == 1.0  # no samples yet, no bets
    est.bets.record(0.6, False)
    assert est.estimate().bet_odds == pytest.approx(0.5 / (1.6 / 1.4))
    est.observe_transfer(500_000, 0, 0.5, now=0.0)
    e = est.estimate()
    assert e.bet_odds == pytest.approx(0.5 / (1.6 / 1.4))
    assert e.calibrated(0.6) == pytest.approx(1.5 * e.bet_odds / (1 + 1.5 * e.bet_odds))
    est.reset()
    assert len(est.bets) == 0 and est.estimate().bet_odds == 1.0
