"""What a request's run produced (``Outcome``) and a decision ready to run (``Decided``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from edge.policy._decide import Decision
from edge.runtime import Session


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
