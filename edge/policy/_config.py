"""``policy.toml``: the policy's settings, validated strictly and hot-reloaded atomically.

Every key is documented in ``docs/policy.md``; ``edge/data/policy.example.toml`` is a
complete example. A file that fails validation is rejected with an error naming the file
and the key, and the last good configuration stays in force.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.config import Table, parse_toml, read_toml
from devices.errors import ConfigError

OBJECTIVES = ("latency", "energy", "weighted")


@dataclass(frozen=True)
class Rules:
    """Hard constraints applied before any objective (see docs/policy.md)."""

    never_send_raw_input: bool = False
    cuts_after: str = ""
    local_below_input_bytes: int = 0
    max_upload_bytes: int = 0
    battery_reserve_pct: float = 0.0
    max_power_w: float = 0.0


@dataclass(frozen=True)
class LinkSettings:
    window: int = 6
    # Cellular bandwidth moves within seconds: samples older than a few seconds say little
    # about the next transfer, and a quiet link is unknown soon.
    half_life_s: float = 2.0
    prior_bandwidth_bps: float = 5e6
    prior_rtt_s: float = 0.05
    risk: float = 0.3
    # The SLO is a constraint: a plan must meet it one spread below the estimate.
    slo_risk: float = 1.0
    # Latency objective with an SLO: a plan that crosses the link is ranked ahead of one
    # that does not only if it still meets the SLO this many spreads below the estimate
    # (a deadline a local run would meet is not bet on a link that may not carry it).
    # Half a spread: at one, resnet50 on the 5G trace fell from 1.05-1.09 of the oracle
    # to 1.10-1.11 and missed no fewer deadlines.
    latency_slo_risk: float = 0.5
    # Latency objective: a plan that crosses the link must be predicted this much faster
    # than local. A plan chosen because its estimate looks good is, more often than not,
    # one whose estimate was lucky: near the break-even point those gambles lost more
    # than they won on the LTE traces.
    remote_margin: float = 0.05


@dataclass(frozen=True)
class ExploreSettings:
    rate: float = 0.05
    stale_after_s: float = 2.0
    # Compute costs move slowly (thermal state, a busy cloud): a cut's measured head and
    # tail times count as stale only after this long without a run of that cut.
    costs_stale_after_s: float = 30.0
    max_regret: float = 1.5
    probe_bytes: int = 64 * 1024
    # A probe that can show a faster link carries half a round trip of the believed rate
    # (250 KB at 100 Mbit/s and 40 ms): 2 MiB a minute is a few of those, enough to follow
    # a cellular link between offloads; lower it on metered links.
    probe_budget_bytes: int = 2048 * 1024
    probe_refill_s: float = 60.0
    # While the device runs locally nothing measures the link: probe as soon as a remote
    # plan could win at the optimistic edge, not only once the estimate is stale. Off by
    # default: on the 5G and Ghent traces it traded one gap for another (docs/policy.md).
    probe_while_local: bool = False
    # Between requests, while the link sits below its usual level and a remote plan
    # would win were it back there, probe shortly before the next request is due (at
    # three quarters of the usual gap): the estimate lags a link that comes back.
    lookahead_probe: bool = True


@dataclass(frozen=True)
class LearningSettings:
    ewma: float = 0.3


@dataclass(frozen=True)
class OffloadSettings:
    deadline_margin_ms: float = 5.0
    # Give up an upload whose measured progress says it will miss the SLO while running
    # locally still meets it (and, under the energy objective, try a remote plan that
    # meets the SLO at the estimate, since a miss can be caught in time).
    abandon: bool = True
    # The least time an upload needs to show its rate: a plan is counted as one that can
    # be given up only if the SLO leaves it this long before the local run must start.
    abandon_judge_ms: float = 60.0
    # ... and such a plan is tried when its chance to meet the SLO is at least this.
    abandon_min_chance: float = 0.05
    # Latency objective: while a remote plan may or may not answer before a local run
    # would (its chance to is within race_min_chance of 0 or 1), run the request on the
    # device at the same time and take whichever answer comes first.
    race: bool = True
    race_min_chance: float = 0.05
    max_retries: int = 1
    breaker_failures: int = 3
    breaker_reset_s: float = 5.0
    timeout_ms: float = 10000.0


@dataclass(frozen=True)
class DeviceSettings:
    power_mode: str = ""
    radio: str = ""
    compute: str = "auto"
    throttle_slowdown: float = 2.0


@dataclass(frozen=True)
class PolicyConfig:
    """The whole of ``policy.toml`` as a frozen value (defaults are documented values)."""

    objective: str = "latency"
    slo_ms: float = 0.0
    latency_weight: float = 0.5
    rules: Rules = field(default_factory=Rules)
    link: LinkSettings = field(default_factory=LinkSettings)
    explore: ExploreSettings = field(default_factory=ExploreSettings)
    learning: LearningSettings = field(default_factory=LearningSettings)
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)
    source: str = ""


def parse_policy_config(data: dict[str, Any], source: str = "policy.toml") -> PolicyConfig:
    """Validate parsed TOML into a :class:`PolicyConfig`; unknown keys are errors."""
    top = Table(data, source)
    objective = top.get("objective", str, "latency", choices=OBJECTIVES)
    slo_ms = top.get("slo_ms", float, 0.0, min=0.0)
    weight = top.get("latency_weight", float, 0.5, min=0.0, max=1.0)
    if objective == "energy" and slo_ms <= 0:
        # Minimum energy with no deadline would always idle the radio and wait: say so.
        raise ConfigError(f"{source}: key 'slo_ms': the 'energy' objective needs a latency SLO > 0")

    r = top.table("rules")
    rules = Rules(
        never_send_raw_input=r.get("never_send_raw_input", bool, False),
        cuts_after=r.get("cuts_after", str, ""),
        local_below_input_bytes=r.get("local_below_input_bytes", int, 0, min=0),
        max_upload_bytes=r.get("max_upload_bytes", int, 0, min=0),
        battery_reserve_pct=r.get("battery_reserve_pct", float, 0.0, min=0.0, max=100.0),
        max_power_w=r.get("max_power_w", float, 0.0, min=0.0),
    )
    r.finish()

    lk = top.table("link")
    dl = LinkSettings()
    link = LinkSettings(
        window=lk.get("window", int, dl.window, min=1, max=1000),
        half_life_s=lk.get("half_life_s", float, dl.half_life_s, min=0.01),
        prior_bandwidth_bps=lk.get("prior_bandwidth_mbps", float, dl.prior_bandwidth_bps / 1e6,
                                   min=1e-3) * 1e6,
        prior_rtt_s=lk.get("prior_rtt_ms", float, dl.prior_rtt_s * 1000.0, min=0.0) / 1000.0,
        risk=lk.get("risk", float, dl.risk, min=0.0, max=3.0),
        slo_risk=lk.get("slo_risk", float, dl.slo_risk, min=0.0, max=3.0),
        latency_slo_risk=lk.get("latency_slo_risk", float, dl.latency_slo_risk,
                                min=0.0, max=3.0),
        remote_margin=lk.get("remote_margin", float, dl.remote_margin, min=0.0, max=1.0),
    )
    lk.finish()

    ex = top.table("explore")
    de = ExploreSettings()
    explore = ExploreSettings(
        rate=ex.get("rate", float, de.rate, min=0.0, max=1.0),
        stale_after_s=ex.get("stale_after_s", float, de.stale_after_s, min=0.0),
        costs_stale_after_s=ex.get("costs_stale_after_s", float, de.costs_stale_after_s,
                                   min=0.0),
        max_regret=ex.get("max_regret", float, de.max_regret, min=1.0),
        probe_bytes=int(ex.get("probe_kb", float, de.probe_bytes / 1024, min=0.0) * 1024),
        probe_budget_bytes=int(ex.get("probe_budget_kb", float, de.probe_budget_bytes / 1024,
                                      min=0.0) * 1024),
        probe_refill_s=ex.get("probe_refill_s", float, de.probe_refill_s, min=0.1),
        probe_while_local=ex.get("probe_while_local", bool, de.probe_while_local),
        lookahead_probe=ex.get("lookahead_probe", bool, de.lookahead_probe),
    )
    ex.finish()

    le = top.table("learning")
    learning = LearningSettings(ewma=le.get("ewma", float, 0.3, min=0.01, max=1.0))
    le.finish()

    of = top.table("offload")
    offload = OffloadSettings(
        deadline_margin_ms=of.get("deadline_margin_ms", float, 5.0, min=0.0),
        abandon=of.get("abandon", bool, True),
        abandon_judge_ms=of.get("abandon_judge_ms", float, 60.0, min=0.0),
        abandon_min_chance=of.get("abandon_min_chance", float, 0.05, min=0.0, max=1.0),
        race=of.get("race", bool, True),
        race_min_chance=of.get("race_min_chance", float, 0.05, min=0.0, max=0.5),
        max_retries=of.get("max_retries", int, 1, min=0, max=10),
        breaker_failures=of.get("breaker_failures", int, 3, min=1),
        breaker_reset_s=of.get("breaker_reset_s", float, 5.0, min=0.0),
        timeout_ms=of.get("timeout_ms", float, 10000.0, min=1.0),
    )
    of.finish()

    dv = top.table("device")
    device = DeviceSettings(
        power_mode=dv.get("power_mode", str, ""),
        radio=dv.get("radio", str, ""),
        compute=dv.get("compute", str, "auto", choices=("auto", "gpu", "cpu")),
        throttle_slowdown=dv.get("throttle_slowdown", float, 2.0, min=1.0),
    )
    dv.finish()
    top.finish()
    return PolicyConfig(objective=objective, slo_ms=slo_ms, latency_weight=weight, rules=rules,
                        link=link, explore=explore, learning=learning, offload=offload,
                        device=device, source=source)


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
