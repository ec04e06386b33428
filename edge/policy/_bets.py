"""How the policy's recent bets came out, against the chances it gave them.

Under the energy objective the policy may try a remote plan that will miss the SLO unless
the link carries what it needs, because the executor watches the upload and gives it up
in time (``edge.policy._decide``). The chance it gives such a plan comes from the link's
forecast (``LinkEstimate.chance_at_least``), a two-piece log-normal fitted to how the
estimate has missed lately. That shape can be wrong for a link in a way the misses do
not show: on a steady, slow link (FCC traces, 1.9 to 2.1 Mbit/s, with 2.35 needed) the
forecast gave 16 to 45 % to bets that all failed, and each failure costs the radio's time
until the upload is given up on top of the local run.

``BetRecord`` keeps the last ``window`` bets (stated chance, whether the answer came in
time) and says by how much the odds they came out at differ from the odds they were
given: ``odds_factor`` = ((won + 1) / (lost + 1)) / ((stated + 1) / (count - stated + 1)),
where ``stated`` is the sum of the chances given (one pseudo-bet each way on both sides,
so no bets, or bets that came out as stated, give 1). The policy multiplies a bet's odds
by it (``LinkEstimate.calibrated``): a chance near 0 or 1 stays near it, one in between
moves towards what happened.
"""

from __future__ import annotations

import threading
from collections import deque

# The bets remembered. Sixteen is a round number, not fitted: enough that two unlucky
# outcomes in sixteen fair even bets move the odds by 1.6x, few enough that a link whose
# character changed is re-learnt within a few minutes of requests.
BET_WINDOW = 16


class BetRecord:
    """The last ``window`` bets on a link; thread-safe."""

    def __init__(self, window: int = BET_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"bet record window must be >= 1, got {window}")
        self._bets: deque[tuple[float, bool]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, chance: float, won: bool) -> None:
        """One bet given ``chance`` (0..1) came out ``won`` (answered in time)."""
        if not 0.0 <= chance <= 1.0:
            raise ValueError(f"a bet's chance must be within 0..1, got {chance}")
        with self._lock:
            self._bets.append((float(chance), bool(won)))

    def clear(self) -> None:
        with self._lock:
            self._bets.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._bets)

    def odds_factor(self) -> float:
        """The odds the bets came out at over the odds they were given (1 with none)."""
        with self._lock:
            n = len(self._bets)
            stated = sum(c for c, _ in self._bets)
            won = sum(1 for _, w in self._bets if w)
        return ((won + 1.0) / (n - won + 1.0)) / ((stated + 1.0) / (n - stated + 1.0))


def calibrate(chance: float, odds_factor: float) -> float:
    """``chance`` with its odds multiplied by ``odds_factor`` (0 and 1 stay)."""
    if chance <= 0.0 or chance >= 1.0 or odds_factor == 1.0:
        return chance
    odds = chance / (1.0 - chance) * odds_factor
    return odds / (1.0 + odds)
