"""The policy engine: per request, choose local, offload or split@cut.

:func:`decide` is a pure function of a :class:`PolicyContext` (the plan table with its
learnt costs, the link estimate with its uncertainty, device and cloud state, the input's
size, a uniform random draw for exploration) and a :class:`PolicyConfig`. Nothing in it
reads a clock, a file or a socket, so every decision can be tested from a table of cases
and replayed from a log. :class:`Policy` wraps it with the config in force (hot-reloaded)
and :class:`CostTable` holds the per-cut costs that every measurement corrects.

Order of reasoning in :func:`decide`:

1. predict latency and energy of every candidate (head on the device, scaled for thermal
   throttling and the local queue; crossing bytes over the risk-adjusted bandwidth plus a
   round trip; tail in the cloud plus its queue; outputs back);
2. rules remove candidates: cloud down, privacy (raw input, ``cuts_after``), input-size
   thresholds, upload cap, power cap;
3. the objective picks one (latency; energy under the SLO; or a weighted mix), switching
   to energy when the battery is below its reserve;
4. with probability ``explore.rate`` a stale candidate that could win is tried instead
   (within ``max_regret``, and never one expected to miss an SLO the best one meets), and a probe is requested when the link is stale and a remote
   plan would win at the optimistic bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from edge.policy._config import PolicyConfig
from edge.policy._link import WATCH_SLICE_BYTES, LinkEstimate
from edge.policy._state import (
    CutEstimate,
    Decision,
    PolicyContext,
    Prediction,
)
from partition import LOCAL, OFFLOAD, SPLIT


def _predict(c: CutEstimate, ctx: PolicyContext, cfg: PolicyConfig, bandwidth_bps: float
             ) -> Prediction:
    sized = ctx.sized.get(c.cut_id)
    if sized is not None:  # the request's dims through the plan's cost curves, exact bytes
        head_f, tail_f, up_bytes, down_bytes = sized
    else:  # no size data in the plan: scale by the input's bytes
        head_f = tail_f = 1.0
        if ctx.input_bytes > 0 and ctx.reference_input_bytes > 0:
            head_f = tail_f = ctx.input_bytes / ctx.reference_input_bytes
        up_bytes, down_bytes = int(c.up_bytes * head_f), int(c.down_bytes * head_f)
    head = c.head_ms * head_f
    if ctx.device.throttled:
        head *= cfg.device.throttle_slowdown
    if head > 0:
        head += ctx.device.local_queue_ms
    if c.kind == LOCAL:
        return Prediction(c.cut_id, c.kind, head, ctx.energy.plan_mj(head), head, 0.0, 0.0,
                          0.0, 0)
    up_ms = up_bytes * 8.0 / max(bandwidth_bps, 1.0) * 1000.0
    down_ms = down_bytes * 8.0 / max(bandwidth_bps, 1.0) * 1000.0
    wait_ms = ctx.link.rtt_s * 1000.0 + c.tail_ms * tail_f + ctx.cloud.queue_ms
    latency = head + up_ms + wait_ms + down_ms
    energy = ctx.energy.plan_mj(head, up_ms, down_ms, wait_ms)
    return Prediction(c.cut_id, c.kind, latency, energy, head, up_ms, wait_ms, down_ms, up_bytes)


def _exclusion(c: CutEstimate, p: Prediction, ctx: PolicyContext, cfg: PolicyConfig) -> str:
    rules = cfg.rules
    if c.kind == LOCAL:
        return ""
    if not ctx.cloud.healthy:
        return "cloud unavailable"
    if rules.never_send_raw_input and (c.sends_raw_input or c.kind == OFFLOAD):
        return "privacy: never_send_raw_input"
    if rules.cuts_after and rules.cuts_after not in c.device_layers:
        return f"privacy: cut is not after '{rules.cuts_after}'"
    if ctx.input_bytes < rules.local_below_input_bytes:
        return (f"input of {ctx.input_bytes} B is below local_below_input_bytes "
                f"({rules.local_below_input_bytes} B)")
    if rules.max_upload_bytes and p.up_bytes > rules.max_upload_bytes:
        return f"uploads {p.up_bytes} B > max_upload_bytes ({rules.max_upload_bytes} B)"
    return ""


# Room kept for a local run that goes slower than predicted, as a fraction of it, when an
# upload may be given up for one (device compute varies run to run by up to a tenth on
# this host's emulated boards; a real board's clocks and heat move it too).
LOCAL_SLACK = 0.1


def _can_abandon(p: Prediction, local: Prediction, cfg: PolicyConfig,
                 link: LinkEstimate) -> bool:
    """Whether ``p``'s upload could be given up once it has shown its rate and the whole
    request still run on the device (``local``) within the SLO. Showing the rate takes
    ``abandon_judge_ms``, or on a slow link longer: a round trip (a new connection) and
    two of the watched upload's slices at the pessimistic rate (the first write the path
    holds back, then one more)."""
    if not cfg.offload.abandon or cfg.slo_ms <= 0 or p.kind == LOCAL or p.up_bytes <= 0:
        return False
    spare = _give_up_by_ms(p, local, cfg)
    judge_ms = max(cfg.offload.abandon_judge_ms,
                   1000.0 * (link.rtt_s + 2 * WATCH_SLICE_BYTES * 8 / max(link.low_bps, 1.0)))
    return spare >= judge_ms


def _give_up_by_ms(p: Prediction, local: Prediction, cfg: PolicyConfig) -> float:
    """How long ``p``'s upload may go on, from its start, before the upload watch must
    give it up for the device to run the request (``local``) within the SLO: the latest
    a failed upload can hold the radio."""
    return (cfg.slo_ms - p.head_ms - local.latency_ms * (1.0 + LOCAL_SLACK)
            - cfg.offload.deadline_margin_ms)


def _bandwidth_within(p: Prediction, planned_bps: float, within_ms: float) -> float:
    """The bandwidth ``p``'s transfers need (``p`` predicted at ``planned_bps``) for it to
    answer within ``within_ms``: 0 when it moves nothing, inf when no bandwidth would do."""
    budget_ms = within_ms - p.head_ms - p.wait_ms
    bit_ms = (p.up_ms + p.down_ms) * planned_bps  # bits x 1000: the same at any rate
    if bit_ms <= 0:
        return 0.0 if budget_ms >= 0 else math.inf
    return bit_ms / budget_ms if budget_ms > 0 else math.inf


def _slo_chance(link: LinkEstimate, needed: float) -> float:
    """The chance that a plan whose transfers need ``needed`` bit/s to answer in time (see
    ``_bandwidth_within``) does: by the link's forecast for the next transfer."""
    if math.isinf(needed):
        return 0.0
    return 1.0 if needed <= 0 else link.chance_at_least(needed)


def _avg_power_w(p: Prediction) -> float:
    return p.energy_mj / p.latency_ms if p.latency_ms > 0 else 0.0


def _score_fn(objective: str, cfg: PolicyConfig, preds: Iterable[Prediction],
              slo_ms_at_low: Mapping[str, float] | None = None,
              expected_mj: Mapping[str, float] | None = None
              ) -> Callable[[Prediction], float]:
    preds = list(preds)
    if objective == "latency":
        margin = 1.0 + cfg.link.remote_margin
        slo = cfg.slo_ms
        worst = slo_ms_at_low or {}
        # With an SLO, plans that may miss it at the pessimistic edge (``slo_ms_at_low``)
        # come after those that meet it there.
        return lambda p: (p.latency_ms * (margin if p.kind != LOCAL else 1.0)
                          + (1e12 if worst.get(p.cut_id, p.latency_ms) > slo > 0 else 0.0))
    if objective == "energy-only":
        return lambda p: p.energy_mj
    if objective == "energy":
        slo = cfg.slo_ms
        worst = slo_ms_at_low or {}
        cost = expected_mj or {}
        # Plans that meet the SLO rank by energy; the others after them by lateness. The
        # SLO is a constraint: a plan meets it only if it does at the pessimistic edge of
        # the link belief (``slo_ms_at_low``), not merely at the expected bandwidth.
        return lambda p: (cost.get(p.cut_id, p.energy_mj)
                          if worst.get(p.cut_id, p.latency_ms) <= slo
                          else 1e12 + p.latency_ms)
    ref_ms = max(min(p.latency_ms for p in preds), 1e-6)
    ref_mj = max(min(p.energy_mj for p in preds), 1e-6)
    w = cfg.latency_weight
    return lambda p: w * p.latency_ms / ref_ms + (1.0 - w) * p.energy_mj / ref_mj


def decide(ctx: PolicyContext, cfg: PolicyConfig) -> Decision:
    """Choose the plan for one request. Pure: same inputs, same decision."""
    if not ctx.candidates:
        raise ValueError("policy: the plan table has no candidates")
    # The less we know about the link, the closer we plan to the pessimistic edge of the
    # belief: with no confidence at all, on the edge itself.
    risk = cfg.link.risk + (1.0 - ctx.link.confidence) * (1.0 - min(cfg.link.risk, 1.0))
    # ... and never above the bandwidth that gives a transfer its expected time, from how
    # the estimate has missed lately (one outage in sixteen samples costs every transfer
    # about a sixteenth of the outage's slowness, on average).
    risk_bw = min(ctx.link.bandwidth_bps * math.exp(-risk * ctx.link.spread),
                  ctx.link.expected_bps)
    preds: list[Prediction] = []
    for c in ctx.candidates:
        p = _predict(c, ctx, cfg, risk_bw)
        why = _exclusion(c, p, ctx, cfg)
        preds.append(Prediction(**{**p.__dict__, "excluded": why}) if why else p)
    allowed = [p for p in preds if not p.excluded]
    notes: list[str] = []
    if cfg.rules.max_power_w > 0 and allowed:
        within = [p for p in allowed if _avg_power_w(p) <= cfg.rules.max_power_w]
        if within:
            for p in allowed:
                if p not in within:
                    notes.append(f"{_plan_name(p)} over max_power_w")
            allowed = within
        else:
            allowed = [min(allowed, key=_avg_power_w)]
            notes.append(f"every plan exceeds max_power_w={cfg.rules.max_power_w:g} W; "
                         "taking the lowest-power one")
    if not allowed:  # only reachable if the plan table lacks a local candidate
        allowed = [min(preds, key=lambda p: p.latency_ms)]
        notes.append("no candidate passed the rules; fastest taken")

    objective = cfg.objective
    battery = ctx.device.battery_pct
    if (cfg.rules.battery_reserve_pct > 0 and ctx.device.on_battery and battery is not None
            and battery < cfg.rules.battery_reserve_pct):
        objective = "energy" if cfg.slo_ms > 0 else "energy-no-slo"
        notes.append(f"battery {battery:.0f}% below reserve "
                     f"{cfg.rules.battery_reserve_pct:.0f}%: saving energy")
    at_low: dict[str, float] = {}
    expected_mj: dict[str, float] = {}
    chances: dict[str, float] = {}
    forecasts: dict[str, float] = {}  # the chances before the bets' calibration
    by_cut = {c.cut_id: c for c in ctx.candidates}
    local = next((q for q in allowed if q.kind == LOCAL), None)
    if objective == "energy-no-slo":
        objective = "energy"
        score = _score_fn("energy-only", cfg, allowed)
    elif objective == "latency":
        if cfg.slo_ms > 0:
            # A deadline that a local run would meet is not bet on a link that may not
            # carry it: a remote plan must meet the SLO ``latency_slo_risk`` spreads below
            # the estimate, unless its upload can be given up in time.
            low_bw = ctx.link.bandwidth_bps * math.exp(-max(risk, cfg.link.latency_slo_risk)
                                                       * ctx.link.spread)
            at_low = {p.cut_id: (-math.inf if local is not None
                                 and _can_abandon(p, local, cfg, ctx.link)
                                 else _predict(by_cut[p.cut_id], ctx, cfg, low_bw).latency_ms)
                      for p in allowed if p.kind != LOCAL}
        score = _score_fn(objective, cfg, allowed, at_low)
    else:
        if objective == "energy":
            low_bw = ctx.link.bandwidth_bps * math.exp(-max(risk, cfg.link.slo_risk)
                                                       * ctx.link.spread)
            at_low = {p.cut_id: _predict(by_cut[p.cut_id], ctx, cfg, low_bw).latency_ms
                      for p in allowed}
            # A plan whose upload can be given up while the device still has time to run
            # the request (the executor watches the upload) need not meet the SLO at the
            # pessimistic edge: a transfer that goes badly is caught in time, at the cost
            # of the radio's time until then and the local run. It is tried when its
            # chance to meet the SLO is at least abandon_min_chance, and ranked by the
            # energy it is expected to cost, failures included.
            for p in allowed:
                if local is None or not _can_abandon(p, local, cfg, ctx.link):
                    continue
                needed = _bandwidth_within(p, risk_bw, cfg.slo_ms)
                # (The forecast's chance, put right by how the recent bets came out.)
                forecast = _slo_chance(ctx.link, needed)
                chance = ctx.link.calibrated(forecast)
                if chance >= cfg.offload.abandon_min_chance:
                    forecasts[p.cut_id] = forecast
                    # A failed upload is given up as soon as it shows it is clearly late,
                    # but one only a little slower than needed is watched until the last
                    # moment: its radio time is charged up to then. (Charged at the
                    # shortest judging time, 60 mJ on a 1 W radio, a failure looked far
                    # cheaper than the given-up uploads of a quiet FCC and HSDPA replay
                    # on the Nano were: 0.4 to 1.2 J over the local run's energy.)
                    fail_mj = local.energy_mj + ctx.energy.tx_w * _give_up_by_ms(p, local, cfg)
                    # When it meets the SLO, its transfers ran at least as fast as that
                    # needs: it costs at most what it does at that bandwidth.
                    won_bw = max(risk_bw, needed)
                    won_mj = min(p.energy_mj,
                                 _predict(by_cut[p.cut_id], ctx, cfg, won_bw).energy_mj)
                    at_low[p.cut_id] = -math.inf
                    expected_mj[p.cut_id] = chance * won_mj + (1.0 - chance) * fail_mj
                    chances[p.cut_id] = chance
        score = _score_fn(objective, cfg, allowed, at_low, expected_mj)
    best = min(allowed, key=score)
    if best.cut_id in chances:
        odds = (f" (forecast {forecasts[best.cut_id]:.0%}, odds x{ctx.link.bet_odds:.2g} "
                f"from how the recent bets came out)" if ctx.link.bet_odds != 1.0 else "")
        notes.append(f"{_plan_name(best)} meets the SLO with chance "
                     f"{chances[best.cut_id]:.0%}{odds} and is given up in time otherwise "
                     f"(expected {expected_mj[best.cut_id]:.0f} mJ)")
    reason = _explain(best, objective, cfg, allowed, preds,
                      meets_slo=at_low.get(best.cut_id, best.latency_ms) <= cfg.slo_ms)
    fastest = min(allowed, key=lambda p: p.latency_ms)
    # (A local plan has no pessimistic-edge figure: its own prediction stands for it.)
    fastest_low = at_low.get(fastest.cut_id, fastest.latency_ms)
    if objective == "latency" and fastest is not best and fastest_low > cfg.slo_ms > 0:
        reason = (f"{_plan_name(best)} kept at {best.latency_ms:.0f} ms: "
                  f"{_plan_name(fastest)} is predicted faster ({fastest.latency_ms:.0f} ms) "
                  f"but would miss the {cfg.slo_ms:g} ms SLO "
                  f"({fastest_low:.0f} ms) with the link "
                  f"{max(risk, cfg.link.latency_slo_risk):.2g} spreads below its estimate")
    elif objective == "latency" and fastest is not best:
        reason = (f"{_plan_name(best)} kept at {best.latency_ms:.0f} ms: "
                  f"{_plan_name(fastest)} is predicted only "
                  f"{100 * (1 - fastest.latency_ms / best.latency_ms):.1f}% faster "
                  f"({fastest.latency_ms:.0f} ms), within remote_margin "
                  f"{100 * cfg.link.remote_margin:g}%")
    if notes:
        reason += "; " + "; ".join(notes)

    # Exploration and probing look at the optimistic side of the link belief.
    stale_s = cfg.explore.stale_after_s
    link_stale = ctx.link.age_s > stale_s or ctx.link.samples == 0
    can_probe = (cfg.explore.probe_bytes > 0
                 and ctx.probe_allowance >= cfg.explore.probe_bytes)
    opt_bw = ctx.link.high_bps
    optimistic = {p.cut_id: _predict(by_cut[p.cut_id], ctx, cfg, opt_bw) for p in allowed}
    # At the optimistic edge a plan is judged by its own prediction there: under the
    # energy objective, the SLO check at the pessimistic edge would rule out every remote
    # plan once the link has gone stale, and nothing would ever refresh it.
    score_opt = score if not at_low else _score_fn(objective, cfg, allowed)
    could_win = [p for p in allowed if p.cut_id != best.cut_id
                 and score_opt(optimistic[p.cut_id]) < score(best)]

    explored = False
    chosen = best
    if ctx.explore_draw < cfg.explore.rate:
        # Exploration never trades a deadline: while the best plan is expected to meet the
        # SLO, a plan expected to miss it is not tried (its estimate is refreshed by a
        # probe instead).
        slo_holds = cfg.slo_ms > 0 and best.latency_ms <= cfg.slo_ms
        stale = [p for p in could_win
                 if (by_cut[p.cut_id].age_s > cfg.explore.costs_stale_after_s
                     or by_cut[p.cut_id].samples == 0
                     # a stale link is refreshed by a probe when one can be sent, which
                     # costs a few hundred kilobytes instead of a request's latency
                     or (p.kind != LOCAL and link_stale and not can_probe))
                 and p.latency_ms <= cfg.explore.max_regret * best.latency_ms
                 and not (slo_holds and p.latency_ms > cfg.slo_ms)]
        if stale:
            chosen = min(stale, key=lambda p: score_opt(optimistic[p.cut_id]))
            explored = True
            reason = (f"exploring {_plan_name(chosen)}: its estimate is stale and it could beat "
                      f"{_plan_name(best)} (predicted {chosen.latency_ms:.0f} ms vs "
                      f"{best.latency_ms:.0f} ms)")
    # Latency objective: a remote plan that may answer before a local run would, or may
    # not, is raced against one (the device runs the request at the same time and the
    # first answer is taken), so that the bet costs no latency when it loses. Of the
    # remote plans, the one likeliest to answer first; the price is the device's energy.
    race = False
    race_extra_mj = race_predicted_mj = 0.0
    if (objective == "latency" and cfg.offload.race and not explored and local is not None
            and ctx.cloud.healthy):
        odds = {p.cut_id: _slo_chance(ctx.link, _bandwidth_within(p, risk_bw, local.latency_ms))
                for p in allowed if p.kind != LOCAL}
        if odds:
            pick = chosen if chosen.kind != LOCAL else min(
                (p for p in allowed if p.kind != LOCAL),
                key=lambda p: (-odds[p.cut_id], p.latency_ms))
            win = odds[pick.cut_id]
            lo = cfg.offload.race_min_chance
            # The race's price over what the plan chosen alone would cost: beside a local
            # run, the radio until the transfers end or the leg is cut off (at
            # race_cloud_span x the local run); beside a remote plan, the device's run.
            if chosen.kind == LOCAL:
                radio_ms = min(pick.up_ms + pick.down_ms,
                               cfg.offload.race_cloud_span * local.latency_ms)
                race_mj = local.energy_mj + ctx.energy.plan_mj(0.0, radio_ms)
            else:
                race_mj = ctx.energy.plan_mj(local.latency_ms, pick.up_ms, pick.down_ms)
            extra_mj = max(race_mj - chosen.energy_mj, 0.0)
            close = (win <= 1.0 - lo) if chosen.kind != LOCAL else (win >= lo)
            if close and extra_mj > ctx.race_allowance_mj:
                reason += (f"; not racing {_plan_name(pick)}: it would add {extra_mj:.0f} mJ, "
                           f"over the {max(ctx.race_allowance_mj, 0.0):.0f} mJ left of "
                           f"race_energy_budget")
            elif close:
                race = True
                race_extra_mj = extra_mj
                race_predicted_mj = race_mj
                chosen = pick
                reason = (f"racing {_plan_name(pick)} against a local run: it answers first "
                          f"with chance {win:.0%} ({pick.latency_ms:.0f} ms predicted, local "
                          f"{local.latency_ms:.0f} ms); the first answer is taken")
    # A probe pays when the link is stale and a plan that uploads more than the current
    # best could win: the best one's own small transfers would never tell. Under the
    # energy objective it pays sooner: when a remote plan that would save energy meets
    # the SLO at the estimate and is held back only by the belief's uncertainty, a fresh
    # sample decides it (a local run costs several offloads' energy).
    doubtful = objective == "energy" and bool(at_low) and any(
        p.kind != LOCAL and p.energy_mj < best.energy_mj
        and _predict(by_cut[p.cut_id], ctx, cfg, ctx.link.bandwidth_bps).latency_ms
        <= cfg.slo_ms < at_low.get(p.cut_id, 0.0) for p in allowed)
    # And while the best plan is local, nothing else will measure the link: after one
    # slow transfer the device would stay local until the estimate went stale.
    idle_link = cfg.explore.probe_while_local and best.kind == LOCAL
    # And while the estimate is provisional (it rests on a stand-in: a given-up upload's
    # rate, a timed-out upload's bound; or a leg timed out after its whole upload went,
    # which cannot tell a slow link from a slow server), a plan small enough to live
    # with a stand-in would never replace it (its transfers cannot show a faster link),
    # and the plan that timed out may time out again without measuring anything. One
    # probe settles it, paid from the same energy allowance as racing (its radio time
    # at the estimate, the pessimistic side).
    probe_mj = ctx.energy.plan_mj(0.0, (ctx.link.transfer_s(cfg.explore.probe_bytes)
                                        + ctx.link.rtt_s) * 1000.0)
    unsettled = ctx.link.provisional and ctx.race_allowance_mj >= probe_mj
    bigger = any(p.kind != LOCAL and p.up_bytes > best.up_bytes for p in could_win)
    probe = (not explored and can_probe
             and (((link_stale or doubtful or idle_link or unsettled) and bigger)
                  or (unsettled and best.kind != LOCAL)))
    if probe:
        reason += ("; link estimate is stale and a remote plan could win: probing"
                   if link_stale else
                   "; the link estimate is in question (a given-up or timed-out upload) "
                   "and a remote plan could win: probing"
                   if unsettled and not (doubtful or idle_link) else
                   "; a plan that saves energy is held back only by the link's "
                   "uncertainty: probing" if doubtful else
                   "; running locally leaves the link unmeasured and a remote plan could "
                   "win: probing")
    predicted_ms, predicted_mj = chosen.latency_ms, chosen.energy_mj
    if race and local is not None:
        # At most the local run's time; the device computes throughout and the radio
        # carries the transfers.
        predicted_ms = min(chosen.latency_ms, local.latency_ms)
        predicted_mj = race_predicted_mj
    return Decision(
        kind=chosen.kind, cut_id=chosen.cut_id, predicted_ms=predicted_ms,
        predicted_mj=predicted_mj, reason=reason, explored=explored, probe=probe,
        objective=objective, deadline_ms=cfg.slo_ms, race=race, race_extra_mj=race_extra_mj,
        predictions=tuple(preds),
        bet_chance=forecasts.get(chosen.cut_id),
    )


def lookahead_probe(ctx: PolicyContext, cfg: PolicyConfig) -> bool:
    """Whether to probe the link now, between requests, for the next one's sake.

    It pays when the link sits in a dip: the plan the policy picks at the estimate
    uploads less than the one it would pick were the link back at its usual level. The
    estimate (a harmonic mean) lags a link that comes back, and the next request would
    be planned on the dip; a probe shortly before it tells which of the two plans it
    should get. Exploration is left out on both sides (it is the request's to draw).
    """
    link = ctx.link
    if (not cfg.explore.lookahead_probe or cfg.explore.probe_bytes <= 0
            or ctx.probe_allowance < cfg.explore.probe_bytes or not ctx.cloud.healthy
            or link.level_bps <= link.bandwidth_bps):  # 0 until the level is known
        return False
    calm = replace(ctx, explore_draw=1.0)
    now = decide(calm, cfg)
    back = decide(replace(calm, link=replace(link, bandwidth_bps=link.level_bps,
                                             rebound=0.0)), cfg)
    up = {c.cut_id: c.up_bytes for c in ctx.candidates}
    return back.kind != LOCAL and up.get(back.cut_id, 0) > up.get(now.cut_id, 0)


def _plan_name(p: Prediction) -> str:
    return f"split@{p.cut_id}" if p.kind == SPLIT else p.kind


def _explain(best: Prediction, objective: str, cfg: PolicyConfig,
             allowed: list[Prediction], preds: list[Prediction], meets_slo: bool = True) -> str:
    name = _plan_name(best)
    others = sorted((p for p in allowed if p is not best), key=lambda p: p.latency_ms)
    runner = f"; next {_plan_name(others[0])} {others[0].latency_ms:.0f} ms" if others else ""
    excluded = [f"{_plan_name(p)} ({p.excluded})" for p in preds if p.excluded]
    ex = "; excluded: " + ", ".join(excluded[:3]) if excluded else ""
    if objective == "latency":
        why = f"{name} is fastest at {best.latency_ms:.0f} ms"
    elif objective == "energy":
        if meets_slo:
            why = (f"{name} uses least energy ({best.energy_mj:.0f} mJ) within the "
                   f"{cfg.slo_ms:g} ms SLO ({best.latency_ms:.0f} ms)")
        else:
            why = (f"no plan meets the {cfg.slo_ms:g} ms SLO; {name} is fastest "
                   f"({best.latency_ms:.0f} ms)")
    else:
        why = (f"{name} has the best weighted score ({best.latency_ms:.0f} ms, "
               f"{best.energy_mj:.0f} mJ, latency weight {cfg.latency_weight:g})")
    return why + runner + ex



class Policy:
    """The decision function with the configuration in force.

    ``config`` is a :class:`PolicyConfig` or anything with a ``config`` attribute that
    returns one (a :class:`PolicyConfigWatcher`, which hot-reloads the file).
    """

    def __init__(self, config: PolicyConfig | object) -> None:
        self._source = config

    @property
    def config(self) -> PolicyConfig:
        src = self._source
        return src if isinstance(src, PolicyConfig) else src.config  # type: ignore[attr-defined]

    def decide(self, context: PolicyContext) -> Decision:
        """Decide for one request under the configuration in force now."""
        return decide(context, self.config)

    def lookahead_probe(self, context: PolicyContext) -> bool:
        """Whether a probe now would serve the next request (see :func:`lookahead_probe`)."""
        return lookahead_probe(context, self.config)
