"""The executor: runs what the policy decided, falls back to the device when the cloud
leg fails or would miss the deadline, and feeds every measurement back.

Per request: decide -> head on the device (``edge.runtime`` sessions) -> the crossing
tensors to the cloud tail (the offload client) -> outputs. If the cloud leg raises or
runs out of its share of the deadline, the request continues on the device from the cut
(the tail model when the plan folder has it) or runs the whole model; it is never lost,
and the outcome says so. Measured device time, transfer time and bytes update the cost
table and the link estimator, so the next decision uses what just happened.
Between requests that come at a steady pace, the executor may probe the link shortly
before the next one is due, when the policy says the link sits in a dip that the next
decision would otherwise be planned on (``Policy.lookahead_probe``).

``compute_scale`` converts device compute measured here into the device's time (trace
replay emulates a slower or faster board: ``1 / relative_speed``); on a real device it is 1.

This module holds the request path (decide, execute); the executor's other jobs are
beside it: sessions and local runs (``_sessions``), folding measurements back and falling
back (``_fold``), racing (``_race``) and its energy allowance (``_allowance``), costing a
request at its own input sizes (``_sizing``), probing and the look-ahead (``_probing``),
the upload watch (``_watch``) and what a request produced (``_outcome``).
"""
from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from devices import (
    DeviceProfile,
    EnergyModel,
    PowerSensor,
    active_power_mode,
    compute_for_providers,
    detect_name,
)
from devices.errors import OffloadError
from edge.offload._allowance import _EnergyAllowance
from edge.offload._client import HALF_OPEN, OPEN, OffloadClient
from edge.offload._fold import _Folding
from edge.offload._outcome import Decided, Outcome, _nbytes, _reference_bytes
from edge.offload._probing import _LOOKAHEAD_GAPS, _Probing
from edge.offload._race import _Racing
from edge.offload._sessions import SessionCache, _Sessions, _whole_model
from edge.offload._sizing import _InputSizing
from edge.offload._watch import abandon_watch
from edge.policy._costs import CostTable
from edge.policy._decide import Policy
from edge.policy._link import LinkEstimator
from edge.policy._state import CloudState, Decision, DeviceState, PolicyContext
from partition import LOCAL, OFFLOAD, CutCandidate, Plan


class Executor(_Sessions, _Folding, _Racing, _Probing):
    """Runs requests for one model under a :class:`Policy` (see the module docstring).

    ``plan_dir`` holds the plan's head and tail models (file names from the plan). The
    whole model comes from ``plan.model_path`` (resolved against ``plan_dir`` when
    relative). ``clock`` drives the ages the policy sees (trace replay passes the trace
    clock); ``device_state`` returns the device's state before each decision.
    """

    def __init__(self, plan: Plan, plan_dir: str | Path, device: DeviceProfile, *,
                 policy: Policy, client: OffloadClient | None,
                 link: LinkEstimator | None = None, costs: CostTable | None = None,
                 energy: EnergyModel | None = None, compute_scale: float = 1.0,
                 cloud_compute_scale: float = 1.0,
                 device_state: Callable[[], DeviceState] | None = None,
                 clock: Callable[[], float] = time.monotonic, seed: int = 0,
                 log_path: str | Path | None = None, intra_op_threads: int | None = None,
                 background_probes: bool = True,
                 power_sensor: PowerSensor | None = None) -> None:
        self.plan = plan
        self.plan_dir = Path(plan_dir)
        self.device = device
        self.policy = policy
        self.client = client
        cfg = policy.config
        self.link = link or LinkEstimator(
            window=cfg.link.window, half_life_s=cfg.link.half_life_s,
            prior_bandwidth_bps=cfg.link.prior_bandwidth_bps, prior_rtt_s=cfg.link.prior_rtt_s,
            probe_budget_bytes=cfg.explore.probe_budget_bytes,
            probe_refill_s=cfg.explore.probe_refill_s, grace_s=cfg.explore.stale_after_s,
            clock=clock)
        # The power mode the board is in: set in policy.toml, else nvpmodel's active mode
        # (on a Jetson), else the profile's default.
        self.power_mode = (cfg.device.power_mode or active_power_mode(device)
                           or device.default_power_mode)
        self.energy = energy or EnergyModel.from_profile(
            device, self.power_mode, cfg.device.radio or None,
            "gpu" if cfg.device.compute == "auto" else cfg.device.compute)
        self.compute_scale = compute_scale
        # The cloud's own compute (its Server-Timing) is charged at this multiple of what
        # the server took: a replay on one host stands a CPU server in for a GPU-class
        # cloud (edge.lab._cloudgpu); 1 on a real deployment.
        self.cloud_compute_scale = cloud_compute_scale
        # The server's last reported compute per cut (seconds, as it took it).
        self.server_compute_s: dict[str, float] = {}
        # The latency objective's energy allowance for racing and probing (_allowance).
        self._allowance = _EnergyAllowance()
        self._device_state = device_state or (lambda: DeviceState(self.power_mode))
        self._clock = clock
        self._rng = random.Random(seed)
        self._sessions = SessionCache(device, intra_op_threads, f"plan '{plan.model}'")
        self._local_inflight = 0
        self._inflight_lock = threading.Lock()
        self._next_id = 0
        self._log = Path(log_path).open("a") if log_path else None
        self._log_lock = threading.Lock()
        self.background_probes = background_probes
        # A real sensor (INA3221 rails, RAPL) corrects the profile's active power online.
        self.power_sensor = power_sensor
        self.probes_sent = 0
        # The radio's time spent on probes (health check and inference, seconds): an
        # energy cost no request carries (the replay charges it to edgecut).
        self.probe_radio_s = 0.0
        self._max_batch: dict[str, int] = {}
        # Called with every Outcome (the agent's statistics, the demo's live table).
        self.listeners: list[Callable[[Outcome], None]] = []
        self._probe_thread: threading.Thread | None = None
        self._probe_lock = threading.Lock()
        # When recent requests were decided (the usual gap between them), and the
        # look-ahead probe waiting for its moment: the next request or close() sets its
        # event, which calls it off.
        self._arrivals: deque[float] = deque(maxlen=_LOOKAHEAD_GAPS + 1)
        self._lookahead_off = threading.Event()
        self._lookahead_lock = threading.Lock()
        self._lookahead_thread: threading.Thread | None = None
        self.lookahead_probes = 0
        # The legs of raced requests (the losing one may run on after the answer).
        self._race_threads: list[threading.Thread] = []
        self.model_path = _whole_model(plan, self.plan_dir)
        full = self._session_for(self.model_path)
        if energy is None and cfg.device.compute == "auto":
            # Active power from the providers the session really got, on the board itself:
            # a GPU wheel that fell back to the CPU draws the CPU's figure. Where this host
            # stands in for another board (replay, benchmarks), the profile's providers.
            on_board = detect_name() == device.name
            self.energy = EnergyModel.from_profile(
                device, self.power_mode, cfg.device.radio or None,
                compute_for_providers(full.providers if on_board else device.providers))
        self.input_names = tuple(s.name for s in full.inputs)
        self.output_names = tuple(s.name for s in full.outputs)
        self.costs = costs or CostTable(
            plan, ewma=cfg.learning.ewma, raw_inputs=self.input_names,
            device_layers=self._device_layers(), clock=clock)
        self.reference_input_bytes = _reference_bytes(full)
        # A plan with costs by input size (partition._sizes): a request's own size is
        # costed against the plan's reference size, at which the cost table learns
        # (observations are divided by the factors).
        self._sizing = _InputSizing(plan)

    def close(self) -> None:
        self._lookahead_off.set()
        if self._lookahead_thread is not None:
            self._lookahead_thread.join(10)
        if self._probe_thread is not None:
            self._probe_thread.join(10)
        for t in self._race_threads:
            t.join(10)
        self._sessions.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- decision -----------------------------------------------------------------------
    def sized(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float, int, int]]:
        """Per cut id, (head factor, tail factor, up bytes, down bytes) at the sizes of
        ``feeds``' dynamic dims (see ``PolicyContext.sized`` and ``_sizing``); empty for a
        plan without size data or inputs that bind no dim."""
        return self._sizing.sized(feeds)

    def context(self, input_bytes: int, *, draw: bool = True,
                sized: Mapping[str, tuple[float, float, int, int]] | None = None) -> PolicyContext:
        """The policy's view of the world right now (``draw``: with an exploration draw;
        without, the draw is 1, never exploring, and the generator is left alone)."""
        now = self._clock()
        base = self._device_state()
        local_ms = next((c.head_ms for c in self.costs.snapshot(now) if c.kind == LOCAL), 0.0)
        with self._inflight_lock:
            queue_ms = self._local_inflight * local_ms
        device = DeviceState(base.power_mode, base.battery_pct, base.on_battery, base.throttled,
                             base.local_queue_ms + queue_ms)
        healthy = self.client is not None and self.client.breaker.state != OPEN
        return PolicyContext(
            candidates=self.costs.snapshot(now), link=self.link.estimate(now),
            energy=self.energy, device=device, cloud=CloudState(healthy=healthy),
            input_bytes=input_bytes, reference_input_bytes=self.reference_input_bytes,
            explore_draw=self._rng.random() if draw else 1.0,
            probe_allowance=self.link.probe_allowance(now), sized=dict(sized or {}),
            race_allowance_mj=self._allowance.level(self.energy, local_ms))

    def _spend_allowance(self, decision: Decision) -> None:
        """A request earns ``race_energy_budget`` x its plan's predicted energy; a race
        spends what it adds (``_allowance``)."""
        self._allowance.earn_and_spend(decision, self.policy.config.offload.race_energy_budget)

    def spend_probe_energy(self, radio_s: float) -> None:
        """A probe's radio time, paid from the racing allowance (probing and racing
        share one energy budget under the latency objective)."""
        self._allowance.spend_radio(self.energy, radio_s)

    # -- running ------------------------------------------------------------------------
    def decide(self, feeds: Mapping[str, np.ndarray], *, force: str | None = None) -> Decided:
        """The plan for ``feeds`` at this moment, without running anything (microseconds).

        Pass the result to ``infer(feeds, decided=...)`` to run that very decision (the
        agent decides on its event loop, then runs a local plan there and hands anything
        that waits on the network to a worker thread).
        """
        rid = self._next_id
        self._next_id += 1
        started = self._clock()
        with self._lookahead_lock:
            self._lookahead_off.set()
            self._arrivals.append(started)
        # The config in force for this request, read before the context: a source that
        # keeps the client on its [offload] keys (the agent's) has then updated the breaker
        # the context reports.
        _ = self.policy.config
        ctx = self.context(_nbytes(feeds), sized=self.sized(feeds))
        if force is None:
            decision = self.policy.decide(ctx)
            self._spend_allowance(decision)
        else:
            cand = self.plan.candidate(force)
            decision = Decision(cand.kind, cand.cut_id, 0.0, 0.0, f"forced {force}",
                                deadline_ms=self.policy.config.slo_ms)
        return Decided(rid, started, ctx.link.bandwidth_bps, decision)

    def infer(self, feeds: Mapping[str, np.ndarray], *, force: str | None = None,
              deadline_ms: float | None = None, decided: Decided | None = None) -> Outcome:
        """Run one request. ``force`` runs that cut id regardless of the policy;
        ``decided`` runs a decision taken earlier by ``decide``."""
        if decided is None:
            decided = self.decide(feeds, force=force)
        decision = decided.decision
        slo = decision.deadline_ms if deadline_ms is None else deadline_ms
        cand = self.plan.candidate(decision.cut_id)
        if self.client is not None and (
                decision.probe or self.client.breaker.state == HALF_OPEN) \
                and not self._measures_link(cand):
            # A half-open breaker wants one trial request: a probe is the cheapest one,
            # and its success closes the circuit even while the policy plans locally.
            self._probe()
        out = self._execute(decided.rid, decision, cand, feeds, slo, decided.started)
        out = replace(out, link_bps=decided.link_bps)
        if decision.bet_chance is not None and cand.kind != LOCAL:
            # A bet is won when the remote plan answered within the deadline itself.
            self.link.bets.record(decision.bet_chance,
                                  not out.fallback and not out.deadline_missed)
        self._arm_lookahead(decided.started)
        self._write_log(out)
        for listener in self.listeners:
            listener(out)
        return out

    def _execute(self, rid: int, decision: Decision, cand: CutCandidate,
                 feeds: Mapping[str, np.ndarray], slo: float, started: float) -> Outcome:
        cfg = self.policy.config
        # Every measurement of this request is folded in at the plan's reference size
        # through ``scale`` (_fold's _observe_*), whichever path or thread takes it.
        scale = self._sizing.scale(feeds)
        if cand.kind == LOCAL:
            outputs, ms = self._run_local(self.model_path, feeds)
            self._observe_whole(ms, scale)
            return self._outcome(rid, decision, "local", "", outputs, ms, 0.0, 0.0, 0, 0,
                                 slo, started)

        head_ms = 0.0
        crossing: dict[str, np.ndarray]
        if cand.kind == OFFLOAD:
            crossing = {k: v for k, v in feeds.items() if k in cand.tensors or not cand.tensors}
        else:
            crossing, head_ms = self._run_local(self.plan_dir / cand.head_model, feeds)
            crossing = {k: crossing[k] for k in cand.tensors}
            self._observe_head(cand, head_ms, scale)
        # As the cloud model takes them (half precision under a plan's fp16 wire format;
        # the tail kept here for the fallback takes them alike).
        crossing = cand.for_wire(crossing)

        # The cloud leg gets what the deadline leaves after keeping enough to finish on
        # the device if it fails: the local tail (or whole model) plus a margin.
        local_rest_ms = self._local_rest_ms(cand)
        deadline = None
        pred = next((p for p in decision.predictions if p.cut_id == cand.cut_id), None)
        if slo > 0:
            budget_ms = slo - head_ms - local_rest_ms - cfg.offload.deadline_margin_ms
            # Never cut the cloud off before twice its predicted time: when the SLO is
            # already lost, falling back early would only add the local rest on top.
            expected = (pred.up_ms + pred.wait_ms + pred.down_ms) if pred else 0.0
            budget_ms = max(budget_ms, 2.0 * expected, local_rest_ms, 20.0)
            # The budget is in the leg's charged time; a cloud faster than the server
            # that plays it (cloud_compute_scale < 1) is charged less than the wall
            # time the server takes, so the wall-clock deadline allows for the
            # difference, as a raced leg's does (0 on a real deployment). Without it the
            # leg was cut off while its charged time was well within the budget: the
            # server's real compute ran the deadline out on every offload (issue 25).
            deadline = (time.monotonic() + budget_ms / 1000.0
                        + max(self._uncharged_s(cand.cut_id), 0.0))
        if decision.race and self.client is not None:
            leg = self._race_leg(cand, feeds, crossing)
            if leg is not None:
                return self._race(rid, decision, cand, crossing, leg, head_ms, slo, started,
                                  local_rest_ms, scale)
        reason = ""
        t0 = time.perf_counter()
        watch = None
        if cfg.offload.abandon and slo > 0:
            watch = abandon_watch(pred, head_ms, local_rest_ms, slo, t0,
                                  cfg.offload.deadline_margin_ms)
        try:
            if self.client is None:
                raise OffloadError("no cloud client configured")
            result = self.client.infer(cand.cloud_model, crossing, self.output_names,
                                       deadline=deadline, request_id=f"{rid}", watch=watch)
        except OffloadError as exc:
            cloud_ms = (time.perf_counter() - t0) * 1000.0
            reason = f"{type(exc).__name__}: {exc}"
            self._observe_cloud_failure(exc, crossing, cloud_ms / 1000.0, cand, scale)
            return self._fallback(rid, decision, cand, feeds, crossing, head_ms, cloud_ms,
                                  reason, slo, started, scale)
        cloud_ms = self._cloud_seconds(result) * 1000.0
        self._observe_cloud(cand, result, scale)
        outputs = {k: v for k, v in result.outputs.items() if k in self.output_names}
        out = self._outcome(rid, decision, decision.plan, "", outputs, head_ms, cloud_ms, 0.0,
                            result.up_bytes, result.down_bytes, slo, started)
        if result.server_s is not None:
            out = replace(out, server_ms=result.server_s * 1000.0)
        return out

    # -- log ----------------------------------------------------------------------------
    def _write_log(self, out: Outcome) -> None:
        if self._log is None:
            return
        with self._log_lock:
            self._log.write(json.dumps(out.to_dict()) + "\n")
            self._log.flush()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

