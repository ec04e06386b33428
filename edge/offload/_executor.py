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
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from devices import (
    DeviceProfile,
    EnergyModel,
    PowerSensor,
    active_power_mode,
    compute_for_providers,
)
from devices.errors import (
    ConfigError,
    DeadlineExceeded,
    EdgecutError,
    OffloadError,
    TransferAbandoned,
)
from edge.offload._client import HALF_OPEN, OPEN, OffloadClient, UploadProgress
from edge.policy._decide import (
    LOCAL_SLACK,
    CloudState,
    CostTable,
    Decision,
    DeviceState,
    Policy,
    PolicyContext,
    Prediction,
)
from edge.policy._link import LinkEstimator
from edge.runtime import Session
from partition import LOCAL, OFFLOAD, CutCandidate, Plan

# A watched upload is read about this often (each write the path holds back): the last
# reading that can still give it up in time comes this long before the last moment.
_RECHECK_MS = 20.0
# An upload projected to answer this far past the SLO is given up at once: through the
# emulator at a steady rate the projection came within 6 % of the answer, and waiting for
# the last reading leaves the local run no room for a slow spell of the device.
_CLEARLY_LATE = 1.1
# A look-ahead probe goes out this far into the usual gap between requests (the median
# of the last few), so that it measures the link the next request will meet and is done
# before that request comes; only once that many gaps are known.
_LOOKAHEAD_AT = 0.75
_LOOKAHEAD_GAPS = 8
_MIN_LOOKAHEAD_GAPS = 3
# A raced request's cloud leg is given up this many times the device's expected time
# after it started, if neither it nor the device has answered by then.
_RACE_CLOUD_SPAN = 1.25


@dataclass(frozen=True)
class Outcome:
    """What happened to one request: the decision, what ran, what it cost."""

    request_id: int
    decision: Decision
    executed: str
    fallback: str
    latency_ms: float
    head_ms: float
    cloud_ms: float
    local_tail_ms: float
    up_bytes: int
    down_bytes: int
    energy_mj: float
    deadline_missed: bool
    started_at: float
    link_bps: float = 0.0
    #: The cloud's own compute time as its ``Server-Timing`` header reported it (0 when
    #: nothing ran remotely or the server did not say).
    server_ms: float = 0.0
    #: Under a raced decision, which side answered first (``cloud`` or ``device``; ""
    #: when the request was not raced). ``local_tail_ms`` is then the device's run, which
    #: went on at the same time as the cloud leg rather than after it; when the device
    #: answered first, ``cloud_ms`` is the most the cloud leg can have run (its cut-off,
    #: or until it failed), the radio time it is charged.
    raced: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "decision": self.decision.to_dict(),
            "executed": self.executed, "fallback": self.fallback,
            "latency_ms": round(self.latency_ms, 3), "head_ms": round(self.head_ms, 3),
            "cloud_ms": round(self.cloud_ms, 3), "local_tail_ms": round(self.local_tail_ms, 3),
            "up_bytes": self.up_bytes, "down_bytes": self.down_bytes,
            "energy_mj": round(self.energy_mj, 3), "deadline_missed": self.deadline_missed,
            "link_mbps": round(self.link_bps / 1e6, 3), "server_ms": round(self.server_ms, 3),
            "raced": self.raced,
        }


def _reference_bytes(session: Session) -> int:
    """Bytes of one batch-1 input set: the size the plan's costs were measured at."""
    total = 0
    for spec in session.inputs:
        count = 1
        for d in spec.shape:
            count *= d if d is not None else 1
        total += count * np.dtype(spec.dtype).itemsize
    return total


def _nbytes(feeds: Mapping[str, np.ndarray]) -> int:
    return int(sum(v.nbytes for v in feeds.values()))


class Decided(NamedTuple):
    """A decision taken by ``Executor.decide``, ready to run."""

    rid: int
    started: float
    link_bps: float
    decision: Decision


class Executor:
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
        self._device_state = device_state or (lambda: DeviceState(self.power_mode))
        self._clock = clock
        self._rng = random.Random(seed)
        self._threads = intra_op_threads
        self._sessions: dict[str, Session] = {}
        self._session_lock = threading.Lock()
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
        # The whole model: the local candidate's file in the plan folder, else model_path.
        local = next((c for c in plan.candidates if c.kind == LOCAL and c.head_model), None)
        model_path = Path(plan.model_path)
        if local is not None and (self.plan_dir / local.head_model).is_file():
            model_path = self.plan_dir / local.head_model
        elif not model_path.is_absolute():
            model_path = self.plan_dir / model_path
        self.model_path = model_path
        full = self._session_for(self.model_path)
        if energy is None and cfg.device.compute == "auto":
            # Active power from the providers the session really got: a GPU wheel that
            # fell back to the CPU (or a CPU-only board) draws the CPU's figure.
            self.energy = EnergyModel.from_profile(
                device, self.power_mode, cfg.device.radio or None,
                compute_for_providers(full.providers))
        self.input_names = tuple(s.name for s in full.inputs)
        self.output_names = tuple(s.name for s in full.outputs)
        self.costs = costs or CostTable(
            plan, ewma=cfg.learning.ewma, raw_inputs=self.input_names,
            device_layers=self._device_layers(), clock=clock)
        self.reference_input_bytes = _reference_bytes(full)

    # -- sessions -----------------------------------------------------------------------
    def _session_for(self, path: Path) -> Session:
        key = str(path)
        with self._session_lock:
            sess = self._sessions.get(key)
            if sess is None:
                from edge.runtime import load

                if not path.is_file():
                    raise ConfigError(f"plan '{self.plan.model}': model file {path} not found")
                kwargs: dict[str, Any] = {}
                if self._threads:
                    kwargs["intra_op_threads"] = self._threads
                sess = load(path, self.device, **kwargs)
                self._sessions[key] = sess
            return sess

    def _head_session(self, cand: CutCandidate) -> Session:
        return self._session_for(self.plan_dir / cand.head_model)

    def _local_tail_path(self, cand: CutCandidate) -> Path | None:
        if not cand.tail_model:
            return None
        path = self.plan_dir / cand.tail_model
        return path if path.is_file() else None

    def _device_layers(self) -> dict[str, frozenset[str]]:
        """Node and tensor names each split's head computes (for the privacy rule)."""
        import onnx

        out: dict[str, frozenset[str]] = {}
        for c in self.plan.candidates:
            if c.kind == LOCAL or not c.head_model:
                continue
            path = self.plan_dir / c.head_model
            if not path.is_file():
                continue
            graph = onnx.load(str(path), load_external_data=False).graph
            names: set[str] = set()
            for n in graph.node:
                names.add(n.name)
                names.update(n.output)
            out[c.cut_id] = frozenset(names)
        return out

    def warm_up(self) -> None:
        """Load every head and local tail session now rather than on first use."""
        for c in self.plan.candidates:
            if c.head_model and (self.plan_dir / c.head_model).is_file():
                self._head_session(c)
            tail = self._local_tail_path(c)
            if tail is not None:
                self._session_for(tail)

    def close(self) -> None:
        self._lookahead_off.set()
        if self._lookahead_thread is not None:
            self._lookahead_thread.join(10)
        if self._probe_thread is not None:
            self._probe_thread.join(10)
        for t in self._race_threads:
            t.join(10)
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- decision -----------------------------------------------------------------------
    def context(self, input_bytes: int, *, draw: bool = True) -> PolicyContext:
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
            probe_allowance=self.link.probe_allowance(now))

    # -- running ------------------------------------------------------------------------
    def _run_local(self, path: Path, feeds: Mapping[str, np.ndarray]) -> tuple[dict, float]:
        with self._inflight_lock:
            self._local_inflight += 1
        try:
            sess = self._session_for(path)
            t0 = time.perf_counter()
            out = sess.run(dict(feeds))
            ms = (time.perf_counter() - t0) * 1000.0 * self.compute_scale
            if self.power_sensor is not None:
                watts = self.power_sensor.read_w()
                if watts is not None and watts > 0:
                    self.energy = self.energy.corrected(watts)
            return out, ms
        finally:
            with self._inflight_lock:
                self._local_inflight -= 1

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
        ctx = self.context(_nbytes(feeds))
        if force is None:
            decision = self.policy.decide(ctx)
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
        if self.client is not None and (decision.probe
                                        or self.client.breaker.state == HALF_OPEN):
            # A half-open breaker wants one trial request: a probe is the cheapest one,
            # and its success closes the circuit even while the policy plans locally.
            self._probe()
        cand = self.plan.candidate(decision.cut_id)
        out = self._execute(decided.rid, decision, cand, feeds, slo, decided.started)
        out = replace(out, link_bps=decided.link_bps)
        self._arm_lookahead(decided.started)
        self._write_log(out)
        for listener in self.listeners:
            listener(out)
        return out

    def _execute(self, rid: int, decision: Decision, cand: CutCandidate,
                 feeds: Mapping[str, np.ndarray], slo: float, started: float) -> Outcome:
        cfg = self.policy.config
        if cand.kind == LOCAL:
            outputs, ms = self._run_local(self.model_path, feeds)
            self.costs.observe_local_full(ms)
            return self._outcome(rid, decision, "local", "", outputs, ms, 0.0, 0.0, 0, 0,
                                 slo, started)

        head_ms = 0.0
        crossing: dict[str, np.ndarray]
        if cand.kind == OFFLOAD:
            crossing = {k: v for k, v in feeds.items() if k in cand.tensors or not cand.tensors}
        else:
            crossing, head_ms = self._run_local(self.plan_dir / cand.head_model, feeds)
            crossing = {k: crossing[k] for k in cand.tensors}
            self.costs.observe(cand.cut_id, head_ms=head_ms)
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
            deadline = time.monotonic() + budget_ms / 1000.0
        if decision.race and self.client is not None:
            leg = self._race_leg(cand, feeds, crossing)
            if leg is not None:
                return self._race(rid, decision, cand, crossing, leg, head_ms, slo, started,
                                  local_rest_ms)
        reason = ""
        t0 = time.perf_counter()
        watch = None
        if cfg.offload.abandon and slo > 0:
            watch = self._abandon_watch(pred, head_ms, local_rest_ms, slo, t0)
        try:
            if self.client is None:
                raise OffloadError("no cloud client configured")
            result = self.client.infer(cand.cloud_model, crossing, self.output_names,
                                       deadline=deadline, request_id=f"{rid}", watch=watch)
        except OffloadError as exc:
            cloud_ms = (time.perf_counter() - t0) * 1000.0
            reason = f"{type(exc).__name__}: {exc}"
            self._observe_cloud_failure(exc, crossing, cloud_ms / 1000.0)
            return self._fallback(rid, decision, cand, feeds, crossing, head_ms, cloud_ms,
                                  reason, slo, started)
        cloud_ms = result.seconds * 1000.0
        self._observe_cloud(cand, result)
        outputs = {k: v for k, v in result.outputs.items() if k in self.output_names}
        out = self._outcome(rid, decision, decision.plan, "", outputs, head_ms, cloud_ms, 0.0,
                            result.up_bytes, result.down_bytes, slo, started)
        if result.server_s is not None:
            out = replace(out, server_ms=result.server_s * 1000.0)
        return out

    def _observe_cloud(self, cand: CutCandidate, result: Any) -> None:
        """Fold a cloud leg's answer into the link estimate and the cost table."""
        server_s = result.server_s if result.server_s is not None else cand.tail_ms / 1000.0
        self.link.observe_transfer(result.up_bytes, result.down_bytes, result.seconds,
                                   server_s=server_s)
        if result.server_s is not None:
            self.costs.observe(cand.cut_id, tail_ms=result.server_s * 1000.0)
        else:
            self.costs.observe(cand.cut_id)

    def _observe_cloud_failure(self, exc: Exception, crossing: Mapping[str, np.ndarray],
                               seconds: float) -> None:
        """What a failed cloud leg says of the link: a given-up upload's rate stands in
        for a bandwidth sample until the next transfer measures the link; a leg that ran
        out of time is a censored sample (the transfer took at least this long, so the
        link is at most this fast), which keeps the estimate honest on a collapse."""
        if isinstance(exc, TransferAbandoned):
            self.link.observe_rate(exc.rate_bps)
        elif isinstance(exc, DeadlineExceeded):
            self.link.observe_censored(_nbytes(crossing), seconds)

    def _tail_feeds(self, tail: Path, feeds: Mapping[str, np.ndarray],
                    crossing: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The local tail's inputs: the crossing tensors plus any model input it reads."""
        sess = self._session_for(tail)
        extra = {s.name: feeds[s.name] for s in sess.inputs if s.name in feeds}
        return {**crossing, **extra}

    def _race_leg(self, cand: CutCandidate, feeds: Mapping[str, np.ndarray],
                  crossing: Mapping[str, np.ndarray]
                  ) -> tuple[Path, dict[str, np.ndarray]] | None:
        """What the device runs to race ``cand``'s cloud leg: the whole model beside an
        offload, the local tail from the cut beside a split (None when the plan folder
        has no tail for it: the device would have to start over, and that is no race)."""
        if cand.kind == OFFLOAD:
            return self.model_path, dict(feeds)
        tail = self._local_tail_path(cand)
        if tail is None:
            return None
        return tail, self._tail_feeds(tail, feeds, crossing)

    def _race(self, rid: int, decision: Decision, cand: CutCandidate,
              crossing: dict[str, np.ndarray], leg: tuple[Path, dict[str, np.ndarray]],
              head_ms: float, slo: float, started: float, device_ms_expected: float
              ) -> Outcome:
        """Run the cloud leg and the device's own run of the rest of the request at the
        same time; the first answer is the request's. Once the device has answered, the
        cloud leg's upload is given up at its next held-back write, and the leg is cut
        off at ``_RACE_CLOUD_SPAN`` x the device's expected time in any case (what it
        showed of the link is kept); the device's run is left to finish when the cloud
        answers first (its time still counts as a measurement). On an emulated board the
        device answers when its scaled time is up.
        """
        assert self.client is not None
        client = self.client
        leg_path, leg_feeds = leg
        done = threading.Condition()
        state: dict[str, Any] = {}
        cloud_won = threading.Event()
        t0 = time.perf_counter()

        def run_device() -> None:
            try:
                outputs, ms = self._run_local(leg_path, leg_feeds)
                if leg_path == self.model_path:
                    self.costs.observe_local_full(ms)
                with done:
                    state["device_ms"] = ms
                # A board slower than this host answers when its own time is up.
                cloud_won.wait(max(ms / 1000.0 - (time.perf_counter() - t0), 0.0))
                with done:
                    state.setdefault("winner", "device")  # unless the cloud was first
                    state["device"] = outputs
                    done.notify_all()
            except Exception as exc:  # noqa: BLE001 - reported as the request's error
                with done:
                    state["device_error"] = exc
                    done.notify_all()

        def watch(p: UploadProgress) -> str:
            return "the device answered first" if state.get("winner") == "device" else ""

        # An answer from the cloud after the device's is of no use but as a measure of the
        # link: the cloud leg may run until a little after the device is expected to
        # answer (a slow spell of the device is given its time). Cut then, it leaves a
        # bound on the link ("at most this fast"); left to run on, a small upload that the
        # path's buffers swallowed whole would wait out a slow link behind the next
        # requests, and the estimate would hear nothing of it meanwhile.
        budget_ms = max(_RACE_CLOUD_SPAN * device_ms_expected, 50.0)

        def run_cloud() -> None:
            t_cloud = time.perf_counter()
            try:
                result = client.infer(cand.cloud_model, crossing, self.output_names,
                                      deadline=time.monotonic() + budget_ms / 1000.0,
                                      request_id=f"{rid}", watch=watch)
            except Exception as exc:  # noqa: BLE001 - any failure leaves it to the device
                self._observe_cloud_failure(exc, crossing, time.perf_counter() - t_cloud)
                with done:
                    state["cloud_error"] = exc
                    done.notify_all()
                return
            self._observe_cloud(cand, result)
            with done:
                state["cloud"] = result
                if state.setdefault("winner", "cloud") == "cloud":
                    cloud_won.set()
                done.notify_all()

        threads = [threading.Thread(target=run_device, name="edgecut-race-device", daemon=True),
                   threading.Thread(target=run_cloud, name="edgecut-race-cloud", daemon=True)]
        for t in threads:
            t.start()
        self._race_threads = [t for t in self._race_threads if t.is_alive()] + threads
        with done:
            done.wait_for(lambda: "winner" in state
                          or ("device_error" in state and "cloud_error" in state))
            if "winner" not in state:
                raise state["device_error"]
            winner = state["winner"]
            waited_ms = (time.perf_counter() - t0) * 1000.0
            device_ms = state.get("device_ms", 0.0)
            cloud_error = state.get("cloud_error")
        if winner == "cloud":
            result = state["cloud"]
            cloud_ms = result.seconds * 1000.0
            outputs = {k: v for k, v in result.outputs.items() if k in self.output_names}
            # The device computed until the answer came; the radio carried the transfers.
            est = self.link.estimate()
            up_ms = min(est.transfer_s(result.up_bytes) * 1000.0, cloud_ms)
            down_ms = min(est.transfer_s(result.down_bytes) * 1000.0, max(cloud_ms - up_ms, 0))
            energy = self.energy.plan_mj(head_ms + cloud_ms, up_ms, down_ms)
            latency = head_ms + cloud_ms
            out = Outcome(rid, decision, decision.plan, "", latency, head_ms, cloud_ms,
                          device_ms, result.up_bytes, result.down_bytes, energy,
                          slo > 0 and latency > slo, started, raced="cloud",
                          server_ms=(result.server_s or 0.0) * 1000.0, outputs=outputs)
            return out
        # The device answered first. The cloud leg ran until it failed, or runs on until
        # it is given up (at most until its cut-off): that time is charged at the radio's
        # transmit power, the most it can have cost.
        latency = head_ms + device_ms
        executed = "local (raced)" if cand.kind == OFFLOAD else f"{decision.plan} -> local tail"
        fallback = f"{type(cloud_error).__name__}: {cloud_error}" if cloud_error else ""
        radio_ms = waited_ms if cloud_error else max(budget_ms, waited_ms)
        energy = self.energy.plan_mj(head_ms + device_ms, radio_ms)
        return Outcome(rid, decision, executed, fallback, latency, head_ms,
                       radio_ms, device_ms, 0, 0, energy,
                       slo > 0 and latency > slo, started, raced="device",
                       outputs=state["device"])

    def _abandon_watch(self, pred: Prediction | None, head_ms: float, local_rest_ms: float,
                       slo: float, t0: float) -> Callable[[UploadProgress], str]:
        """The upload watch of one request: give the upload up when, at the rate it is
        progressing, the answer would come after the SLO while finishing on the device
        would still meet it. Past that point it carries on: the device could not make
        the SLO either, and the transfer is the cheaper of the two to finish."""
        margin = self.policy.config.offload.deadline_margin_ms
        # After serialising, what the prediction adds: the round trip, the tail's compute
        # and the answer's download.
        after_ms = (pred.wait_ms + pred.down_ms) if pred is not None else 0.0

        # A local run started later may miss (device compute varies run to run: on this
        # host's emulated boards by up to a tenth, on a board with clocks and heat).
        latest_ms = slo - local_rest_ms * (1.0 + LOCAL_SLACK) - margin

        def watch(p: UploadProgress) -> str:
            now_ms = head_ms + (time.perf_counter() - t0) * 1000.0
            finish_ms = head_ms + p.serialise_s() * 1000.0 + after_ms
            if now_ms > latest_ms:
                # Too late for the device to make the SLO; still, when the upload would
                # answer even later than a run started now, that run is the better miss
                # (a link far slower than hoped, first read late).
                local_ms = now_ms + local_rest_ms * (1.0 + LOCAL_SLACK)
                if finish_ms <= local_ms * _CLEARLY_LATE:
                    return ""
                return (f"upload progressing at {p.rate_bps / 1e6:.1f} Mbit/s would answer "
                        f"at {finish_ms:.0f} ms, later than the device would ({local_ms:.0f}"
                        " ms): finished on the device")
            if finish_ms <= slo:
                return ""
            # Late at this rate. Give up now if clearly late, or if the next reading may
            # come too late; else wait and see: a link can come back within a transfer,
            # and a wrong give-up costs a whole local run.
            if finish_ms <= slo * _CLEARLY_LATE and now_ms + _RECHECK_MS <= latest_ms:
                return ""
            return (f"upload progressing at {p.rate_bps / 1e6:.1f} Mbit/s would answer at "
                    f"{finish_ms:.0f} ms, past the {slo:.0f} ms SLO: finished on the device")

        return watch

    def _local_rest_ms(self, cand: CutCandidate) -> float:
        snap = {c.cut_id: c for c in self.costs.snapshot()}
        local = next((c.head_ms for c in snap.values() if c.kind == LOCAL), 0.0)
        if self._local_tail_path(cand) is not None:
            return max(local - snap[cand.cut_id].head_ms, 0.0)
        return local

    def _fallback(self, rid: int, decision: Decision, cand: CutCandidate,
                  feeds: Mapping[str, np.ndarray], crossing: dict[str, np.ndarray],
                  head_ms: float, cloud_ms: float, reason: str, slo: float,
                  started: float) -> Outcome:
        tail_path = self._local_tail_path(cand)
        if tail_path is not None and cand.kind != OFFLOAD:
            outputs, ms = self._run_local(tail_path, self._tail_feeds(tail_path, feeds,
                                                                      crossing))
            executed = f"{decision.plan} -> local tail"
        else:
            outputs, ms = self._run_local(self.model_path, feeds)
            self.costs.observe_local_full(ms)
            executed = "local (fallback)"
        return self._outcome(rid, decision, executed, reason, outputs, head_ms, cloud_ms, ms,
                             0, 0, slo, started)

    def _outcome(self, rid: int, decision: Decision, executed: str, fallback: str,
                 outputs: dict, head_ms: float, cloud_ms: float, local_tail_ms: float,
                 up: int, down: int, slo: float, started: float) -> Outcome:
        latency = head_ms + cloud_ms + local_tail_ms
        if fallback:
            # What the failed cloud leg sent is unknown: its whole time is charged at the
            # radio's transmit power, the most it can have cost.
            up_ms, down_ms, wait_ms = cloud_ms, 0.0, 0.0
        else:
            est = self.link.estimate()
            up_ms = min(est.transfer_s(up) * 1000.0, cloud_ms)
            down_ms = min(est.transfer_s(down) * 1000.0, max(cloud_ms - up_ms, 0.0))
            wait_ms = max(cloud_ms - up_ms - down_ms, 0.0)
        energy = self.energy.plan_mj(head_ms + local_tail_ms, up_ms, down_ms, wait_ms)
        missed = slo > 0 and latency > slo
        return Outcome(rid, decision, executed, fallback, latency, head_ms, cloud_ms,
                       local_tail_ms, up, down, energy, missed, started, outputs=outputs)

    # -- probing ------------------------------------------------------------------------
    def _arm_lookahead(self, started: float) -> None:
        """After a request that started at ``started``: when requests come at a steady
        pace, wait until ``_LOOKAHEAD_AT`` of the usual gap and probe then if the policy
        says the link sits in a dip (``Policy.lookahead_probe``). A request decided in
        the meantime calls it off. The wait follows the executor's clock (a trace replay
        runs its own), so it polls rather than sleeping once."""
        if self.client is None or not self.policy.config.explore.lookahead_probe:
            return
        with self._lookahead_lock:
            times = list(self._arrivals)
            if len(times) <= _MIN_LOOKAHEAD_GAPS or times[-1] != started:
                return  # too few gaps known, or a later request is under way
            gap = statistics.median(b - a for a, b in zip(times, times[1:]))
            due = started + _LOOKAHEAD_AT * gap
            if gap <= 0 or self._clock() >= due:
                return
            off = self._lookahead_off = threading.Event()

        def wait() -> None:
            while self._clock() < due:
                if off.wait(0.005):
                    return
            if (self.policy.lookahead_probe(self.context(self.reference_input_bytes,
                                                         draw=False))
                    and self._probe()):
                self.lookahead_probes += 1

        self._lookahead_thread = threading.Thread(target=wait, name="edgecut-lookahead",
                                                  daemon=True)
        self._lookahead_thread.start()

    def probe_link(self, probes: int = 2) -> bool:
        """Probe the link now and wait for the answers (a device does this when it starts,
        so that its first decision is not made blind). False when nothing could be sent.

        Two probes by default (within the probe budget): with one sample the estimator
        cannot tell how much the link varies and plans far on the pessimistic side.
        """
        if self.client is None:
            return False
        sent = self.probes_sent
        background, self.background_probes = self.background_probes, False
        try:
            for _ in range(probes):
                self._probe()
        finally:
            self.background_probes = background
        return self.probes_sent > sent

    def _probe(self) -> bool:
        """Send a light, valid request to refresh a stale link estimate (within budget);
        whether one went out. Request threads and the look-ahead may ask at once: one
        probe at a time."""
        with self._probe_lock:
            run = self._next_probe_locked()
            if run is not None and self.background_probes:
                self._probe_thread = threading.Thread(target=run, name="edgecut-probe",
                                                      daemon=True)
                self._probe_thread.start()
                return True
        if run is not None:
            run()
        return run is not None

    def _next_probe_locked(self) -> Callable[[], None] | None:
        """The probe to send now, its bytes spent and counted; None when none should go
        (one is under way, nothing remote to probe, or the budget is short)."""
        if self._probe_thread is not None and self._probe_thread.is_alive():
            return None
        remote = [c for c in self.plan.candidates if c.kind != LOCAL and c.up_bytes > 0]
        if not remote:
            return None
        want = self.link.probe_size(self.policy.config.explore.probe_bytes)
        allowance = self.link.probe_allowance()
        resolving = self.link.resolving_bytes()
        # Only a probe big enough to show a faster link is worth its bytes (a smaller one
        # could only say "not slower"); up to twice that size it can show a link up to
        # four times faster than believed (the headroom a bound gives), and the rest of the
        # budget is kept for the next one. Each remote candidate at the batch that comes
        # closest to that (at most what its cloud model takes), within the budget; the
        # closest wins, then the one whose tail costs the cloud least.
        target = max(resolving, min(want, 2 * resolving))
        options = []
        for c in remote:
            up = max(c.up_bytes, 1)
            batch = min(self._cloud_max_batch(c), -(-target // up), allowance // up)
            if batch >= 1 and up * batch >= resolving:
                options.append((abs(up * batch - target), c.tail_ms * batch, batch, c))
        if not options:
            return None
        _, _, batch, cand = min(options, key=lambda o: o[:2])
        try:
            specs = self._cloud_input_specs(cand)
        except EdgecutError:
            return None
        feeds = {}
        for name, (dtype, shape) in specs.items():
            dims = [batch if (i == 0 and d is None) else (d or 1) for i, d in enumerate(shape)]
            feeds[name] = np.zeros(dims, dtype=dtype)
        feeds = cand.for_wire(feeds)
        nbytes = _nbytes(feeds)
        if not self.link.spend_probe(nbytes):
            return None
        self.probes_sent += 1

        def run() -> None:
            started = time.monotonic()
            try:
                assert self.client is not None
                self.link.observe_rtt(self.client.ping())
                t0 = time.monotonic()
                r = self.client.infer(cand.cloud_model, feeds, None,
                                      deadline=t0 + self.policy.config.offload.timeout_ms / 1000)
                server_s = r.server_s if r.server_s is not None else cand.tail_ms * batch / 1000
                self.link.observe_transfer(r.up_bytes, r.down_bytes, r.seconds, server_s=server_s)
            except EdgecutError:
                pass
            finally:
                self.probe_radio_s += time.monotonic() - started

        return run

    def _cloud_max_batch(self, cand: CutCandidate) -> int:
        """The largest batch ``cand``'s cloud model takes: its ``max_batch_size`` in the
        plan's repository (the one the cloud serves), 1 when it does not batch, 8 (the
        usual Triton setting) when the repository is not here to say."""
        cached = self._max_batch.get(cand.cloud_model)
        if cached is None:
            from cloud._config import read_config
            from cloud.errors import CloudError

            cached = 8
            model_dir = self.plan_dir / "repository" / cand.cloud_model
            if model_dir.is_dir():
                try:
                    cached = max(read_config(model_dir).max_batch_size, 1)
                except CloudError:
                    pass
            self._max_batch[cand.cloud_model] = cached
        return cached

    def _cloud_input_specs(self, cand: CutCandidate) -> dict[str, tuple[Any, tuple]]:
        if cand.kind == OFFLOAD:
            sess = self._session_for(self.model_path)
            return {s.name: (s.dtype, s.shape) for s in sess.inputs}
        sess = self._head_session(cand)
        return {s.name: (s.dtype, s.shape) for s in sess.outputs if s.name in cand.tensors}

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
