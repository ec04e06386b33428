"""Link estimation from the transfers the offload client actually makes.

Bandwidth is the harmonic mean of the last few throughput samples (as adaptive-bitrate
players do: one lucky burst cannot inflate it, and a slow sample pulls it down quickly),
each weighted by how recent it is relative to the newest, so that after a quiet spell a
fresh sample is not outvoted by a window of old ones;
the round-trip time is a windowed minimum of the small transfers and probes. The spread
of the belief, and the rebound after a dip, come from the estimate's own recent misses
(:mod:`edge.policy._misses`). Confidence decays with the
time since traffic last flowed beyond a grace period (the usual gap between requests, which
the forecast error already covers), so a quiet link is treated as unknown rather than as
what it was minutes ago. Probes are allowed only when the estimate is stale and within a
byte budget that refills over time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge.policy._bets import BetRecord, calibrate
from edge.policy._misses import Misses
from edge.policy._stand_ins import MIN_BANDWIDTH_SAMPLE_BYTES, StandIns

# A transfer that went much faster than believed says the link is faster only if it is
# big enough not to have slipped through in a burst (a link's buffer, a shaper's bucket),
# and would have taken at least half a round trip at the believed rate.
_MIN_BOUND_SAMPLE_BYTES = 64 * 1024
# The optimistic edge's extra room, in log units, once the link has been quiet for
# very long (16 times, on top of the belief's own widening): none for _QUIET_AFTER_S,
# then half of it every _QUIET_AFTER_S more. A link not heard from for minutes may be
# anything; but a device running locally between probes must not probe a slow link on
# every request (each probe costs its radio time: on the NYU trace, widening with the
# confidence's decay instead cost 4-9 % more energy than the oracle).
_QUIET_HEADROOM = math.log(16.0)
_QUIET_AFTER_S = 30.0

# The offload client sends a watched upload in slices this big; the policy reckons with
# one slice in flight when it works out how soon a slow upload can be given up.
WATCH_SLICE_BYTES = 16 * 1024


@dataclass(frozen=True)
class LinkEstimate:
    """What the device believes about its uplink now.

    ``spread`` is the relative uncertainty of ``bandwidth_bps`` (0 = certain): the
    bandwidth is believed to lie within ``bandwidth_bps * exp(+-spread)``. It widens as
    ``confidence`` (0..1) decays with ``age_s``, the seconds since the last transfer.
    """

    bandwidth_bps: float
    rtt_s: float
    confidence: float
    spread: float
    age_s: float
    samples: int
    #: Extra room on the optimistic side only: the last sample was a bound (the link was
    #: faster than that transfer could resolve), so the link may be well above it.
    headroom: float = 0.0
    #: ``bandwidth_bps`` over the bandwidth that gives the expected transfer time: the mean
    #: of ``estimate / sample`` over the recent forecast errors (1 until enough are
    #: known). Transfer time goes as 1 / bandwidth, so a link that sometimes comes in far
    #: below its estimate costs more on average than its estimate says.
    inverse_bias: float = 1.0
    #: How far above the estimate the next sample has come lately, as ``spread`` is how
    #: far below (0: as ``spread``). After a dip the estimate is low and the link comes
    #: back well above it more often than the downside says.
    spread_up: float = 0.0
    #: The expected log of the next sample over ``bandwidth_bps``, from how far the
    #: estimate sits below the link's usual level and how much of such a gap the next
    #: sample has closed lately (0 until learnt); ``rebound_down`` and ``rebound_up`` are
    #: that forecast's spreads below and above (0: ``spread`` and ``spread_up``).
    rebound: float = 0.0
    rebound_down: float = 0.0
    rebound_up: float = 0.0
    #: The link's usual level: the median of the recent samples (0 until
    #: ``_MIN_LEVELS`` are known). Below it, the link is in a dip.
    level_bps: float = 0.0
    #: The estimate is in question and no measured transfer has settled it since: its
    #: newest samples include a stand-in (a rate reading or a censored bound, see
    #: ``LinkEstimator.observe_rate``), or a cloud leg ran out of time without saying
    #: whether the link or the server was slow (``LinkEstimator.doubt``). The policy
    #: should check it (a probe) rather than plan on it for long. Under a stand-in
    #: ``headroom`` reaches at least the measured samples' level.
    provisional: bool = False
    #: How the recent bets on this link (remote plans tried on a chance, see
    #: ``edge.policy._bets``) came out: their odds over the odds they were given (1 until
    #: any are known). ``calibrated`` puts a chance from ``chance_at_least`` through it.
    bet_odds: float = 1.0

    def calibrated(self, chance: float) -> float:
        """``chance`` with its odds scaled by how the recent bets came out."""
        return calibrate(chance, self.bet_odds)

    def chance_at_least(self, bps: float) -> float:
        """The chance that the link carries at least ``bps`` for the next transfer: its
        log taken as a two-piece normal around the rebound forecast."""
        centre = self.bandwidth_bps * math.exp(self.rebound)
        if bps <= centre:
            sd = self.rebound_down or self.spread
        else:
            sd = self.rebound_up or self.spread_up or self.spread
        if sd <= 1e-9:
            return 1.0 if centre >= bps else 0.0
        z = math.log(centre / max(bps, 1e-9)) / sd
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    @property
    def expected_bps(self) -> float:
        """The bandwidth at which a transfer takes its expected time."""
        return self.bandwidth_bps / self.inverse_bias

    @property
    def low_bps(self) -> float:
        """A pessimistic bandwidth (the lower edge of the belief)."""
        return self.bandwidth_bps * math.exp(-self.spread)

    @property
    def high_bps(self) -> float:
        """An optimistic bandwidth: the upper edge of the belief, widened further once
        the link has been quiet for long. What exploration and probes look at: a slow
        reading must not leave every remote plan looking hopeless, and so the link
        unmeasured, for good."""
        quiet = 1.0 - 0.5 ** (max(self.age_s - _QUIET_AFTER_S, 0.0) / _QUIET_AFTER_S)
        return self.bandwidth_bps * math.exp(self.spread + self.headroom
                                             + quiet * _QUIET_HEADROOM)

    def resolving_bytes(self) -> int:
        """The smallest transfer that can show the link is faster than believed: half a
        round trip of serialising at the believed rate (see ``observe_transfer``)."""
        return max(_MIN_BOUND_SAMPLE_BYTES, int(self.bandwidth_bps * 0.5 * self.rtt_s / 8))

    def probe_bytes(self, minimum: int) -> int:
        """Bytes a probe should carry to be informative: two bandwidth-delay products at
        the optimistic bandwidth, at least ``minimum``."""
        # No more than one second of the link at the pessimistic rate, though: a probe
        # must not hog a slow link.
        want = int(min(self.high_bps * max(self.rtt_s, 0.005) * 2 / 8, self.low_bps * 1.0 / 8))
        return max(minimum, want)

    def transfer_s(self, nbytes: int, bandwidth_bps: float | None = None) -> float:
        """Seconds to move ``nbytes`` one way at ``bandwidth_bps`` (default: the estimate)."""
        bw = self.bandwidth_bps if bandwidth_bps is None else bandwidth_bps
        return nbytes * 8.0 / max(bw, 1.0)


class LinkEstimator(StandIns):
    """Online bandwidth and RTT estimate, fed by every offload and probe.

    Thread-safe: the executor records from request threads while the policy reads.
    """

    def __init__(
        self,
        *,
        window: int = 6,
        half_life_s: float = 10.0,
        prior_bandwidth_bps: float = 5e6,
        prior_rtt_s: float = 0.05,
        probe_budget_bytes: int = 256 * 1024,
        probe_refill_s: float = 60.0,
        grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError(f"link estimator window must be >= 1, got {window}")
        self.window = window
        self.half_life_s = half_life_s
        self.grace_s = grace_s
        self._clock = clock
        self._bw: deque[tuple[float, float]] = deque(maxlen=window)  # (bit/s, when)
        self._rtt: deque[float] = deque(maxlen=window * 2)
        self._misses = Misses(window)
        self._prior_bw = prior_bandwidth_bps
        self._prior_rtt = prior_rtt_s
        self._last_traffic: float | None = None
        self._bounded = False  # the newest sample is a "faster than this" bound
        # How many of the newest samples are rate readings (see observe_rate): stand-ins
        # that the next measured transfer replaces.
        self._readings = 0
        # A cloud leg ran out of time since the last measured transfer, and nothing it
        # showed could tell a slow link from a slow server (see doubt).
        self._doubted = False
        self._lock = threading.Lock()
        self.probes = ProbeBudget(probe_budget_bytes, probe_refill_s, clock())
        self.total_samples = 0
        #: The outcomes of the policy's bets on this link (the executor records them).
        self.bets = BetRecord()

    # -- observations -------------------------------------------------------------------
    def observe_transfer(self, up_bytes: int, down_bytes: int, seconds: float,
                         server_s: float = 0.0, now: float | None = None) -> None:
        """Record one request: bytes each way and its wall time, less the server's compute.

        - Serialisation dominates (at least half the time once the round trip is out):
          a bandwidth sample.
        - Round trip dominates, and the time is about what the estimate predicts: the link
          still behaves as believed. If the transfer was big enough to tell (a quarter of
          a round trip of serialising at the believed rate) the confidence is refreshed.
          It can also raise a too-low estimate, to the rate it shows: its bytes over the
          time left after the round trip when that is at least a quarter of a round trip;
          when less (lost in the round trip's jitter) but under half the serialisation
          the estimate predicts (and the transfer is big enough not to be a burst), its
          bytes over a quarter round trip (the most it can resolve); else only its bytes
          over the whole time.
        - Round trip dominates but the time is well over the prediction: the link is
          slower than believed; the time left after the round trip gives a sample.
        """
        now = self._clock() if now is None else now
        # The server's time is often a prediction: never let it explain away more than
        # 80 % of what was measured, or a slow server would look like an infinite link.
        net_s = max(seconds - max(server_s, 0.0), seconds * 0.2, 1e-6)
        nbytes = up_bytes + down_bytes
        with self._lock:
            rtt = self._rtt_locked()
            bw = self._bw_locked()
            if nbytes < MIN_BANDWIDTH_SAMPLE_BYTES:
                # A tiny transfer is all round trip.
                self._rtt.append(max(net_s, 1e-4))
                return
            payload_s = net_s - rtt
            serial_s = nbytes * 8.0 / max(bw, 1.0)
            expected_s = rtt + serial_s
            if payload_s >= 0.5 * net_s:
                self._add_sample_locked(nbytes * 8.0 / payload_s, now)
            elif net_s <= expected_s * 1.3 + 0.005:
                if payload_s >= 0.25 * rtt:
                    shown = nbytes * 8.0 / payload_s
                elif (payload_s < 0.5 * serial_s and serial_s >= 0.5 * rtt
                      and nbytes >= _MIN_BOUND_SAMPLE_BYTES):
                    # Lost in the round trip's jitter, yet well under what the estimate
                    # predicts: the link is faster than believed, by at least what a
                    # transfer this small can resolve.
                    shown = nbytes * 8.0 / (0.25 * rtt)
                    self._bounded = True
                    if shown <= bw:
                        self._last_traffic = now
                        return
                else:  # about as believed: only the bytes over the whole time
                    shown = nbytes * 8.0 / net_s
                if shown > bw or not self._bw:
                    bounded = self._bounded and shown == nbytes * 8.0 / (0.25 * rtt)
                    self._add_sample_locked(shown, now)
                    self._bounded = bounded
                elif serial_s >= 0.25 * rtt:
                    # Big enough that a slower link would have shown: the belief holds.
                    # (Requiring half a round trip, so that a faster one would have shown
                    # too, let the energy objective's belief go stale between probes; the
                    # executor's probes are that big anyway.)
                    self._last_traffic = now
            else:
                self._add_sample_locked(nbytes * 8.0 / max(payload_s, 0.1 * net_s), now)

    def _record_miss_locked(self, bps: float) -> None:
        """Note how far the estimate missed ``bps``, before the sample joins the window."""
        self._misses.record(bps, self._bw_locked() if self._bw else None)

    def _drop_readings_locked(self) -> None:
        for _ in range(min(self._readings, len(self._bw))):
            self._bw.pop()
        self._readings = 0

    def _add_sample_locked(self, bps: float, now: float) -> None:
        self._drop_readings_locked()
        self._doubted = False
        self._record_miss_locked(bps)
        self._bounded = False
        self._bw.append((bps, now))
        self._last_traffic = now
        self.total_samples += 1

    def observe_rtt(self, seconds: float, now: float | None = None) -> None:
        """Record a round trip of a tiny request (a health probe)."""
        now = self._clock() if now is None else now
        del now  # a round trip says nothing new about bandwidth: confidence is not refreshed
        with self._lock:
            self._rtt.append(max(seconds, 1e-4))

    def reset(self) -> None:
        """Forget every sample (the link changed: a new network, a reconnect)."""
        with self._lock:
            self._bw.clear()
            self._rtt.clear()
            self._misses.clear()
            self._last_traffic = None
            self._bounded = False
            self._readings = 0
            self._doubted = False
        self.bets.clear()

    # -- estimate -----------------------------------------------------------------------
    def _weights_locked(self) -> list[float]:
        # Samples count less the older they are than the newest one (halving every
        # half-life): taken together they are one link, but after a quiet spell the
        # first new sample speaks for the link of now, not the window of long ago.
        newest = self._bw[-1][1]
        return [0.5 ** (max(newest - t, 0.0) / self.half_life_s) for _, t in self._bw]

    def _bw_locked(self) -> float:
        if not self._bw:
            return self._prior_bw
        # A (weighted) harmonic mean.
        w = self._weights_locked()
        return sum(w) / sum(wi / max(b, 1.0) for wi, (b, _) in zip(w, self._bw))

    def _rtt_locked(self) -> float:
        # The median: samples inferred from transfers carry errors both ways, so the
        # classic windowed minimum would ratchet down on the first underestimate.
        if not self._rtt:
            return self._prior_rtt
        ordered = sorted(self._rtt)
        return ordered[(len(ordered) - 1) // 2]

    def estimate(self, now: float | None = None) -> LinkEstimate:
        """The current belief, with its confidence and spread."""
        now = self._clock() if now is None else now
        bet_odds = self.bets.odds_factor()  # under its own lock, not the estimator's
        with self._lock:
            bw = self._bw_locked()
            rtt = self._rtt_locked()
            n = len(self._bw)
            if self._last_traffic is None or n == 0:
                age = math.inf if self._last_traffic is None else now - self._last_traffic
                return LinkEstimate(bw, rtt, 0.0, math.log(8.0), age, n, bet_odds=bet_odds)
            age = max(now - self._last_traffic, 0.0)
            fill = min(1.0, n / min(self.window, 2))
            confidence = fill * 0.5 ** (max(age - self.grace_s, 0.0) / self.half_life_s)
            bias = 1.0
            sd_up = None
            spreads = self._misses.spreads()
            if spreads is not None:
                sd, sd_up, bias = spreads
            elif n > 1:  # too few misses measured yet: the scatter of the samples
                logs = [math.log(max(b, 1.0)) for b, _ in self._bw]
                w = self._weights_locked()
                mean = sum(wi * x for wi, x in zip(w, logs)) / sum(w)
                sd = math.sqrt(sum(wi * (x - mean) ** 2 for wi, x in zip(w, logs))
                               / sum(w))
            else:
                sd = 0.5
            widen = (1.0 - confidence) * math.log(4.0)
            spread = sd + widen
            spread_up = (sd_up if sd_up is not None else sd) + widen
            # After a bound, the optimistic edge allows four times the estimate: enough
            # for exploration to try a plan that only a fast link would favour.
            headroom = math.log(4.0) if self._bounded else 0.0
            provisional = self._readings > 0 or self._doubted
            if 0 < self._readings < n:
                # A stand-in says the link may be this slow, not that it cannot be what
                # the transfers measured: the optimistic edge keeps their level, or a
                # plan small enough to live with the stand-in would never measure the
                # link again (its transfers cannot show a faster one).
                headroom = max(headroom, math.log(max(self._measured_bw_locked() / bw, 1.0)))
            level = self._misses.level()
            rebound, down, up = self._misses.rebound(bw)
            return LinkEstimate(bw, rtt, confidence, spread, age, n, headroom,
                                min(max(bias, 0.5), 10.0), spread_up, rebound,
                                down + widen if down else 0.0, up + widen if up else 0.0,
                                math.exp(level) if level is not None else 0.0,
                                provisional, bet_odds)

    def _measured_bw_locked(self) -> float:
        """The weighted harmonic mean of the samples that are not stand-ins (0 when they
        weigh nothing next to the newest: so long before it that their weights vanish)."""
        keep = len(self._bw) - self._readings
        w = self._weights_locked()[:keep]
        samples = list(self._bw)[:keep]
        inverse = sum(wi / max(b, 1.0) for wi, (b, _) in zip(w, samples))
        return sum(w) / inverse if inverse > 0 else 0.0

    # -- probing ------------------------------------------------------------------------
    def resolving_bytes(self, now: float | None = None) -> int:
        """See :meth:`LinkEstimate.resolving_bytes` (of the estimate now)."""
        return self.estimate(now).resolving_bytes()

    def probe_size(self, minimum: int, now: float | None = None) -> int:
        """Bytes a probe should carry to be informative (:meth:`LinkEstimate.probe_bytes`),
        at most the budget left."""
        return min(self.estimate(now).probe_bytes(minimum), self.probe_allowance(now))

    def probe_allowance(self, now: float | None = None) -> int:
        """Bytes a probe may spend now (the budget refills fully every ``probe_refill_s``)."""
        now = self._clock() if now is None else now
        with self._lock:
            return self.probes.allowance(now)

    def spend_probe(self, nbytes: int, now: float | None = None) -> bool:
        """Take ``nbytes`` from the probe budget; False (and nothing taken) if it lacks them."""
        now = self._clock() if now is None else now
        with self._lock:
            return self.probes.spend(nbytes, now)


class ProbeBudget:
    """The bytes probes may spend: a token bucket of ``budget_bytes`` that refills fully
    every ``refill_s`` (not thread-safe; the estimator holds its lock around it)."""

    def __init__(self, budget_bytes: int, refill_s: float, now: float) -> None:
        self.budget_bytes = budget_bytes
        self.refill_s = refill_s
        self._tokens = float(budget_bytes)
        self._stamp = now

    def allowance(self, now: float) -> int:
        self._refill(now)
        return int(self._tokens)

    def spend(self, nbytes: int, now: float) -> bool:
        self._refill(now)
        if nbytes > self._tokens:
            return False
        self._tokens -= nbytes
        return True

    def _refill(self, now: float) -> None:
        rate = self.budget_bytes / max(self.refill_s, 1e-6)
        self._tokens = min(float(self.budget_bytes), self._tokens + (now - self._stamp) * rate)
        self._stamp = now
