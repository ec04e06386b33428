"""The latency objective's energy allowance for racing and probing ([offload]
``race_energy_budget``): one budget both draw on, so that neither spends energy the
other was meant to have.

Each request earns ``race_energy_budget`` x its plan's predicted energy; a race spends
the energy it adds and a probe its radio time. At most one local run is saved up, and
the allowance starts with that one run once the first decision knows what it costs.
"""

from __future__ import annotations

import threading

from devices import EnergyModel
from edge.policy._state import Decision
from partition import LOCAL


class _EnergyAllowance:
    """The allowance in mJ (thread-safe: requests, races and probes run on several
    threads). The energy model is passed in on each call because the executor corrects
    it online from a power sensor."""

    def __init__(self) -> None:
        # None until the first decision sets it to one local run.
        self._mj: float | None = None
        self._lock = threading.Lock()

    def level(self, energy: EnergyModel, local_ms: float) -> float:
        """What is left (mJ); the first call saves up one local run of ``local_ms``."""
        with self._lock:
            if self._mj is None:
                self._mj = energy.plan_mj(local_ms)
            return self._mj

    def earn_and_spend(self, decision: Decision, budget: float) -> None:
        """Credit ``budget`` x the decision's plan energy and debit what its race adds,
        capped at one local run."""
        local = next((p for p in decision.predictions if p.kind == LOCAL), None)
        cap = local.energy_mj if local is not None else 0.0
        base = decision.predicted_mj - decision.race_extra_mj
        with self._lock:
            have = self._mj if self._mj is not None else cap
            self._mj = min(have + budget * base - decision.race_extra_mj, max(cap, 0.0))

    def spend_radio(self, energy: EnergyModel, radio_s: float) -> None:
        """Debit a probe's radio time (nothing before the first decision)."""
        with self._lock:
            if self._mj is not None:
                self._mj -= energy.plan_mj(0.0, radio_s * 1000.0)
