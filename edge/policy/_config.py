"""``policy.toml``: the policy's settings, validated strictly and hot-reloaded atomically.

Every key is declared once below (default, range, unit, meaning); ``docs/policy.md``'s
reference tables and ``edge/data/policy.example.toml`` are written from these declarations
by ``scripts/config_docs.py``, and the docs test checks they agree. A file that fails validation is rejected with an error naming the file
and the key, and the last good configuration stays in force.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.config import Table, parse_toml, read_toml
from devices.errors import ConfigError
from devices.schema import parse, section, setting

OBJECTIVES = ("latency", "energy", "weighted")

# Keys whose name changed, with their new names (a file using the old one is refused
# with this name rather than told the key is unknown).
_RENAMED = {"explore.probe_kb": "probe_kib", "explore.probe_budget_kb": "probe_budget_kib"}


@dataclass(frozen=True)
class Rules:
    """Hard constraints applied before any objective (see docs/policy.md)."""

    never_send_raw_input: bool = setting(
        False, "the raw input never leaves the device: no `offload`, no cut that carries an "
        "input tensor", note="true: the raw input never leaves the device (no offload)")
    cuts_after: str = setting(
        "", "a node or tensor name; only cuts whose head computes it may send anything",
        note="a node or tensor name: only cuts after it may leave the device")
    local_below_input_bytes: int = setting(
        0, "inputs smaller than this always run locally", unit="bytes", min=0)
    max_upload_bytes: int = setting(
        0, "plans uploading more than this are not used; 0 = no cap", unit="bytes", min=0)
    battery_reserve_pct: float = setting(
        0.0, "below this charge, while discharging, the objective becomes `energy`; 0 = off",
        note="below this (on battery) the objective becomes energy", unit="%", min=0.0,
        max=100.0, example=20.0)
    max_power_w: float = setting(
        0.0, "plans whose average device power exceeds this are not used; 0 = no cap",
        unit="W", min=0.0)


@dataclass(frozen=True)
class LinkSettings:
    """The link estimator and how far below its estimate plans are made."""

    window: int = setting(6, "throughput samples in the harmonic mean", unit="samples", min=1,
                          max=1000)
    # Cellular bandwidth moves within seconds: samples older than a few seconds say little
    # about the next transfer, and a quiet link is unknown soon.
    half_life_s: float = setting(
        2.0, "a sample counts half once a newer one is this much younger; confidence halves "
        "after this long without traffic",
        note="samples count half after this long; confidence halves without traffic",
        unit="s", min=0.01)
    prior_bandwidth_bps: float = setting(
        5e6, "belief before any traffic (held with zero confidence)",
        note="belief before any traffic", key="prior_bandwidth_mbps", unit="Mbit/s",
        scale=1e6, min=1e-3)
    prior_rtt_s: float = setting(0.05, "round trip before any traffic", key="prior_rtt_ms",
                                 unit="ms", scale=1e-3, min=0.0)
    risk: float = setting(
        0.3, "how far towards the pessimistic edge a confident estimate is planned",
        note="0 = plan on the mean bandwidth; 1 = on its pessimistic edge", min=0.0, max=3.0)
    # The SLO is a constraint: a plan must meet it one spread below the estimate.
    slo_risk: float = setting(
        1.0, "energy objective: how far below the estimate (at least `risk`) a plan must still "
        "meet `slo_ms`", note="energy objective: spreads below the estimate the SLO must hold at",
        unit="spreads", min=0.0, max=3.0)
    # Latency objective with an SLO: a plan that crosses the link is ranked ahead of one
    # that does not only if it still meets the SLO this many spreads below the estimate
    # (a deadline a local run would meet is not bet on a link that may not carry it).
    latency_slo_risk: float = setting(
        0.5, "latency objective with `slo_ms`: how far below the estimate (at least `risk`) a "
        "plan that crosses the link must still meet the SLO to be ranked with those that do "
        "not cross it (at 1, resnet50 on the Nano and the 5G trace went from 1.05-1.09 of the "
        "oracle to 1.10-1.11 and missed no fewer deadlines; most of its misses were uploads "
        "that collapsed at an estimate of 65-90 Mbit/s, which no edge of the belief foresees)",
        note="latency objective with slo_ms: the same, for plans that use the link",
        unit="spreads", min=0.0, max=3.0)
    # Latency objective: a plan that crosses the link must be predicted this much faster
    # than local. A plan chosen because its estimate looks good is, more often than not,
    # one whose estimate was lucky: near the break-even point those gambles lost more
    # than they won on the LTE traces.
    remote_margin: float = setting(
        0.05, "latency objective: a plan that crosses the link must be predicted this fraction "
        "faster than local",
        note="latency objective: a plan using the link must be this much faster than local",
        min=0.0, max=1.0)


@dataclass(frozen=True)
class ExploreSettings:
    """Trying stale plans and probing the link."""

    rate: float = setting(0.05, "share of requests that may try a stale plan that could win",
                          min=0.0, max=1.0)
    stale_after_s: float = setting(
        2.0, "an estimate older than this is stale (cellular bandwidth moves within seconds)",
        note="an estimate older than this is stale (mobile links change in seconds)",
        unit="s", min=0.0)
    # Compute costs move slowly (thermal state, a busy cloud): a cut's measured head and
    # tail times count as stale only after this long without a run of that cut.
    costs_stale_after_s: float = setting(
        30.0, "a cut's measured head and tail times are stale (worth exploring) after this long "
        "without a run of that cut",
        note="a cut's measured compute times are stale after this long unused", unit="s",
        min=0.0)
    max_regret: float = setting(1.5, "an explored plan may be predicted at most this x the best",
                                min=1.0)
    probe_bytes: int = setting(64 * 1024, "smallest link probe", note="size of a link probe",
                               key="probe_kib", unit="KiB", scale=1024, kind=float, min=0.0)
    # A probe that can show a faster link carries half a round trip of the believed rate
    # (250 KB at 100 Mbit/s and 40 ms): 2 MiB a minute is a few of those, enough to follow
    # a cellular link between offloads; lower it on metered links.
    probe_budget_bytes: int = setting(
        2048 * 1024, "most probe bytes per refill period (a probe that can show a faster link "
        "is half a round trip at the believed rate, 250 KB at 100 Mbit/s and 40 ms; lower it "
        "on metered links: at most this per `probe_refill_s`, and only while requests arrive, "
        "a remote plan could win, and the link estimate is stale or the device runs locally)",
        note="most probe bytes per refill period (lower on metered links)",
        key="probe_budget_kib", unit="KiB", scale=1024, kind=float, min=0.0)
    probe_refill_s: float = setting(60.0, "the probe budget refills over this period", unit="s",
                                    min=0.1)
    # While the device runs locally nothing measures the link: probe as soon as a remote
    # plan could win at the optimistic edge, not only once the estimate is stale. Off by
    # default: on the 5G and Ghent traces it traded one gap for another (docs/policy.md).
    probe_while_local: bool = setting(
        False, "probe as soon as the best plan is local and a remote plan could win at the "
        "optimistic edge, not only once the estimate is stale (running locally measures "
        "nothing: after one slow transfer the device stays local until then). Three "
        "interleaved pairs of runs on the Nano (Ghent, 5G): inception_v1 on 5G went from "
        "1.06-1.07 of the oracle to 1.02-1.05 and its Ghent energy runs from 1.58-1.96 to "
        "1.27-1.41, but those then missed 3.1 points more deadlines than the oracle (-1 to +2 "
        "before), and resnet50 on 5G went from 1.07-1.09 to 1.07-1.11 (twice behind "
        "always-offload); so it is off",
        note="true: probe while running locally if a remote plan could win (not only when "
        "stale)")
    # Between requests, while the link sits below its usual level and a remote plan
    # would win were it back there, probe shortly before the next request is due (at
    # three quarters of the usual gap): the estimate lags a link that comes back.
    lookahead_probe: bool = setting(
        True, "between steadily paced requests, probe at three quarters of the usual gap when "
        "the plan at the link's usual level uploads more than the plan at the estimate (a dip "
        "the estimate lags): the next request is planned on the link it will meet (see \"How "
        "a decision is made\", step 6)",
        note="probe shortly before the next request while the link sits in a dip")


@dataclass(frozen=True)
class LearningSettings:
    """The cost table's online correction."""

    ewma: float = setting(0.3, "weight of each new measurement in the cost table",
                          note="weight of each new measurement in the per-cut estimates",
                          min=0.01, max=1.0)


@dataclass(frozen=True)
class OffloadSettings:
    """The cloud leg: deadlines, giving up, racing, retries, the breaker, the timeout.

    The agent, the replay and the demo build their offload client from these keys
    (``edge.offload.offload_client``), and the agent follows a changed policy live."""

    deadline_margin_ms: float = setting(
        5.0, "kept back from the deadline for the local fallback", unit="ms", min=0.0)
    # Give up an upload whose measured progress says it will miss the SLO while running
    # locally still meets it (and, under the energy objective, try a remote plan that
    # meets the SLO at the estimate, since a miss can be caught in time).
    abandon: bool = setting(
        True, "give up an upload whose progress says it will miss the SLO while a local run "
        "still meets it",
        note="give up an upload that its progress says will miss the SLO while a local run "
        "still meets it (energy objective: remote plans that meet the SLO at the estimate "
        "are then tried)")
    # The least time an upload needs to show its rate: a plan is counted as one that can
    # be given up only if the SLO leaves it this long before the local run must start.
    abandon_judge_ms: float = setting(
        60.0, "the least time the SLO must leave an upload to show its rate (its first wait "
        "holds the path's one-way delay) for its plan to count as one that can be given up; "
        "on a slow link the policy allows more (a round trip and two 16 KiB slices at the "
        "pessimistic bandwidth)",
        note="the least time an upload needs to show its rate (its first wait holds the "
        "path's one-way delay)", unit="ms", min=0.0)
    # ... and such a plan is tried when its chance to meet the SLO is at least this.
    abandon_min_chance: float = setting(
        0.05, "energy objective: a plan that can be given up is tried when its chance to meet "
        "the SLO is at least this",
        note="energy objective: such a plan is tried when its chance to meet the SLO is at "
        "least this (ranked by expected energy)", min=0.0, max=1.0)
    # Latency objective: while a remote plan may or may not answer before a local run
    # would (its chance to is within race_min_chance of 0 or 1), run the request on the
    # device at the same time and take whichever answer comes first.
    race: bool = setting(
        True, "latency objective: race a remote plan that may or may not answer before a "
        "local run against one (the device runs the request too; the first answer is taken; "
        "costs the device's energy)",
        note="latency objective: race a remote plan that may or may not answer before a local "
        "run against one (first answer taken; costs the device's energy)")
    race_min_chance: float = setting(
        0.05, "a remote plan is raced when its chance to answer first is at least this and, if "
        "it is the chosen plan, at most 1 minus this (surer bets go without the local run)",
        note="raced when its chance to answer first is in [this, 1 - this]", min=0.0, max=0.5)
    # Latency objective: racing and probing may add at most this fraction to the energy
    # of the plans the device runs, over time (an allowance that each request earns as
    # this share of its plan's predicted energy, and that a race's extra energy and a
    # probe's radio time spend; it saves up at most one local run's worth). An
    # operator's price for latency, not a fitted figure: 0 races never, a large value
    # races whenever the chance says so (the behaviour before issue 25).
    race_energy_budget: float = setting(
        0.2, "latency objective: racing and probing may add at most this fraction to the "
        "energy of the plans run, over time: each request earns this share of its plan's "
        "predicted energy, a race spends what it is predicted to add (a local run beside a "
        "remote plan, or the radio beside a local one) and a probe its radio time; a race is "
        "run only when the allowance covers it, and the allowance saves up at most one local "
        "run. 0 = never race. Never spent on battery below `battery_reserve_pct` (the "
        "objective is `energy` then, which does not race)",
        note="latency objective: racing and probing add at most this share to the energy of "
        "the plans run (0 = never race)", unit="fraction", min=0.0)
    # A raced request's cloud leg is given up this many times the device's expected time
    # after it started, if neither has answered (set on the bandwidth-drop scenario: a
    # small upload the path swallowed would otherwise wait out a collapsed link).
    race_cloud_span: float = setting(
        1.25, "a raced request's cloud leg is given up this many times the device's expected "
        "time after it started, if neither has answered (what it showed of the link is kept "
        "as a bound); the policy prices a race beside a local run at the radio's time until "
        "then. Set on the bandwidth-drop scenario: left to run on, a small upload the path's "
        "buffers swallowed waited out a collapsed link behind the next requests",
        note="a raced cloud leg is cut off at this x the device's time", unit="x",
        min=1.0, max=10.0)
    max_retries: int = setting(
        1, "retries of a failed cloud call, only while the deadline leaves room",
        note="retries of a failed cloud call, only within the deadline", min=0, max=10)
    breaker_failures: int = setting(3, "consecutive failures that open the circuit", min=1)
    breaker_reset_s: float = setting(5.0, "pause before a half-open trial request", unit="s",
                                     min=0.0)
    timeout_ms: float = setting(
        10000.0, "the cloud call's timeout (the one timeout of an inference request to the "
        "cloud; within an SLO the deadline cuts it shorter)",
        note="cloud call timeout (an SLO's deadline cuts it shorter)", unit="ms", min=1.0)


@dataclass(frozen=True)
class DeviceSettings:
    """What the energy model and the throttling correction assume of the device."""

    power_mode: str = setting(
        "", "power mode for the energy model; `\"\"` = the active nvpmodel mode on a Jetson "
        "(`nvpmodel -q`), else the profile's default",
        note="power mode for the energy model; \"\" = nvpmodel's active one, else the profile's default")
    radio: str = setting("", "radio for the energy model; `\"\"` = the profile's default",
                         note="radio for the energy model; \"\" = the profile's default")
    compute: str = setting(
        "auto", "`gpu` or `cpu`: which active power the device draws; `auto` = `gpu` when the "
        "model's session got the CUDA or TensorRT provider, else `cpu`",
        note="\"auto\" | \"gpu\" | \"cpu\": which active power; auto = from the session's providers",
        choices=("auto", "gpu", "cpu"))
    throttle_slowdown: float = setting(
        2.0, "device compute is this much slower while thermally throttled", unit="x", min=1.0)


@dataclass(frozen=True)
class PolicyConfig:
    """The whole of ``policy.toml`` as a frozen value: its schema (each key declared once,
    with its default, range and meaning; see ``devices.schema``)."""

    objective: str = setting(
        "latency", "`latency`, `energy` (needs `slo_ms` > 0) or `weighted`",
        note="\"latency\" | \"energy\" (needs slo_ms) | \"weighted\"", choices=OBJECTIVES)
    slo_ms: float = setting(0.0, "latency SLO per request (the deadline); 0 = none",
                            note="per-request latency SLO (the deadline); 0 = none", unit="ms",
                            min=0.0, example=200.0)
    latency_weight: float = setting(
        0.5, "`weighted` only: 1 = all latency, 0 = all energy",
        note="only for \"weighted\": 1 = all latency, 0 = all energy", min=0.0, max=1.0)
    rules: Rules = section(Rules)
    link: LinkSettings = section(LinkSettings)
    explore: ExploreSettings = section(ExploreSettings)
    learning: LearningSettings = section(LearningSettings)
    offload: OffloadSettings = section(
        OffloadSettings, "The agent, `edgecut replay` and the demo build their cloud client "
        "from these keys (`timeout_ms` is the one timeout of a cloud call; agent.toml has none), "
        "and the agent follows a policy reloaded or pushed over the fleet link from its next "
        "request on.")
    device: DeviceSettings = section(DeviceSettings)
    source: str = ""


#: The example file's header (``edge/data/policy.example.toml`` is written from the schema).
EXAMPLE_HEADER = """\
# edgecut policy: how each request chooses local, offload or split@cut.
# Every key is optional; the values below are the defaults unless marked. See docs/policy.md.
# (Written from edge/policy/_config.py by scripts/config_docs.py.)"""


def parse_policy_config(data: dict[str, Any], source: str = "policy.toml") -> PolicyConfig:
    """Validate parsed TOML into a :class:`PolicyConfig`; unknown keys are errors."""
    top = Table(data, source)
    objective = top.get("objective", str, "latency", choices=OBJECTIVES)
    slo_ms = top.get("slo_ms", float, 0.0, min=0.0)
    if objective == "energy" and slo_ms <= 0:
        # Minimum energy with no deadline would always idle the radio and wait: say so.
        raise ConfigError(f"{source}: key 'slo_ms': the 'energy' objective needs a latency SLO > 0")
    return parse(PolicyConfig, data, source, renamed=_RENAMED, extra={"source": source})


def load_policy_config(path: str | Path) -> PolicyConfig:
    """Read and validate a ``policy.toml`` file."""
    return parse_policy_config(read_toml(path), str(path))


def policy_config_from_text(text: str, source: str = "policy.toml") -> PolicyConfig:
    """Validate ``policy.toml`` content that arrived as text (e.g. over MQTT)."""
    return parse_policy_config(parse_toml(text, source), source)


class PolicyConfigWatcher:
    """Holds the policy config in force and reloads it when its file changes.

    :attr:`config` is swapped as one reference, so a reader sees either the old or the new
    configuration, never a mix. A file that fails validation leaves the last good one in
    force; the error is kept in :attr:`last_error` and passed to ``on_error``.
    """

    def __init__(self, path: str | Path, *, check_interval_s: float = 1.0,
                 on_change: Callable[[PolicyConfig], None] | None = None,
                 on_error: Callable[[ConfigError], None] | None = None) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._on_change = on_change
        self._on_error = on_error
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._config = load_policy_config(self.path)  # the first one must be valid
        self._checked = time.monotonic()
        self.last_error: ConfigError | None = None
        self.reloads = 0

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @property
    def config(self) -> PolicyConfig:
        """The configuration in force (checks the file at most every ``check_interval_s``)."""
        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            self.check()
        return self._config

    def check(self) -> bool:
        """Reload now if the file changed; True when a new configuration took effect."""
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                new = load_policy_config(self.path)
            except ConfigError as exc:
                self.last_error = exc
                if self._on_error is not None:
                    self._on_error(exc)
                return False
            self._config = new
            self.last_error = None
            self.reloads += 1
        if self._on_change is not None:
            self._on_change(new)
        return True
