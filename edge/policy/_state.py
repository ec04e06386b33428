"""What a decision is made from and what it says: the candidates as the policy sees them
(``CutEstimate``), device and cloud state, the whole ``PolicyContext``, and the
``Prediction`` and ``Decision`` that :func:`~edge.policy._decide.decide` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from devices import EnergyModel
from edge.policy._link import LinkEstimate
from partition import SPLIT


@dataclass(frozen=True)
class CutEstimate:
    """One candidate as the policy sees it now: learnt costs at the reference input size.

    ``device_layers`` are the node and tensor names computed on the device before the
    cut (privacy rule ``cuts_after``); ``age_s`` is the time since its costs were last
    measured (``inf`` when never).
    """

    cut_id: str
    kind: str
    head_ms: float
    tail_ms: float
    up_bytes: int
    down_bytes: int
    sends_raw_input: bool = False
    device_layers: frozenset[str] = frozenset()
    age_s: float = math.inf
    samples: int = 0


@dataclass(frozen=True)
class DeviceState:
    """The device at decision time; ``battery_pct`` is ``None`` on mains-only boards."""

    power_mode: str = ""
    battery_pct: float | None = None
    on_battery: bool = False
    throttled: bool = False
    local_queue_ms: float = 0.0

    @staticmethod
    def from_sysfs(root: str = "/", power_mode: str = "") -> DeviceState:
        """Battery and thermal state read from ``root``'s sysfs (``/`` on the device)."""
        from devices import read_battery, read_thermal

        bat = read_battery(root)
        thermal = read_thermal(root)
        return DeviceState(
            power_mode=power_mode,
            battery_pct=None if bat is None else bat.capacity_pct,
            on_battery=bool(bat is not None and bat.discharging),
            throttled=bool(thermal is not None and thermal.throttled),
        )


@dataclass(frozen=True)
class CloudState:
    """The cloud as the client sees it: reachable (breaker not open) and its queue time."""

    healthy: bool = True
    queue_ms: float = 0.0


@dataclass(frozen=True)
class PolicyContext:
    """Everything :func:`decide` may look at."""

    candidates: tuple[CutEstimate, ...]
    link: LinkEstimate
    energy: EnergyModel
    device: DeviceState = DeviceState()
    cloud: CloudState = CloudState()
    input_bytes: int = 0
    reference_input_bytes: int = 0
    explore_draw: float = 1.0
    probe_allowance: int = 0
    #: Per cut id, the request's own size: (head factor, tail factor, up bytes, down bytes),
    #: the factors relative to the plan's reference size (``partition.cost_at``). A cut
    #: listed here is costed by these instead of the input-bytes ratio.
    sized: Mapping[str, tuple[float, float, int, int]] = field(default_factory=dict)
    #: Energy the latency objective may still spend on racing (mJ; see ``[offload]
    #: race_energy_budget``): the executor's running allowance. Unbounded when unknown.
    race_allowance_mj: float = math.inf


@dataclass(frozen=True)
class Prediction:
    """Predicted cost of one candidate; ``excluded`` says which rule removed it, if any."""

    cut_id: str
    kind: str
    latency_ms: float
    energy_mj: float
    head_ms: float
    up_ms: float
    wait_ms: float
    down_ms: float
    up_bytes: int
    excluded: str = ""


@dataclass(frozen=True)
class Decision:
    """What to run for one request, what it should cost, and why."""

    kind: str
    cut_id: str
    predicted_ms: float
    predicted_mj: float
    reason: str
    explored: bool = False
    probe: bool = False
    objective: str = "latency"
    deadline_ms: float = 0.0
    #: Run the request on the device at the same time and take the first answer.
    race: bool = False
    #: What the race adds to the energy of the plan that would run without it (mJ).
    race_extra_mj: float = 0.0
    predictions: tuple[Prediction, ...] = field(default=(), compare=False)
    #: The plan is a bet (under the energy objective, tried on a chance to meet the SLO
    #: and given up in time otherwise): the link forecast's chance, before the recent
    #: bets' calibration. The executor records how it came out (``LinkEstimator.bets``).
    bet_chance: float | None = None

    @property
    def plan(self) -> str:
        """``local``, ``offload`` or ``split@<cut>``."""
        return f"split@{self.cut_id}" if self.kind == SPLIT else self.kind

    def to_dict(self) -> dict[str, object]:
        return {
            "plan": self.plan, "kind": self.kind, "cut_id": self.cut_id,
            "predicted_ms": round(self.predicted_ms, 3),
            "predicted_mj": round(self.predicted_mj, 3), "reason": self.reason,
            "explored": self.explored, "probe": self.probe, "objective": self.objective,
            "deadline_ms": self.deadline_ms, "race": self.race,
            "bet_chance": None if self.bet_chance is None else round(self.bet_chance, 4),
        }
