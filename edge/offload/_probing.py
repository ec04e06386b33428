"""Probing the link: a light, valid request within the probe budget when the estimate is
stale, before the first decision, or shortly before the next request is due when the link
sits in a dip (the look-ahead).

``_Probing`` is one of the jobs of :class:`~edge.offload._executor.Executor`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from devices.errors import EdgecutError
from edge.offload._fold import fold_cloud_failure
from edge.offload._outcome import _nbytes
from partition import LOCAL, OFFLOAD, CutCandidate

# A look-ahead probe goes out this far into the usual gap between requests (the median
# of the last few), so that it measures the link the next request will meet and is done
# before that request comes; only once that many gaps are known.
_LOOKAHEAD_AT = 0.75
_LOOKAHEAD_GAPS = 8
_MIN_LOOKAHEAD_GAPS = 3


class _Probing:
    """The look-ahead and the probes it and the requests send."""

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
            # (A request decided just before the moment calls the probe off even when this
            # thread, held up on a busy host, next reads the clock past the moment.)
            if off.is_set():
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

    def _measures_link(self, cand: CutCandidate) -> bool:
        """Whether running ``cand`` measures the link by itself: it uploads at least what
        can show a faster link than believed (``resolving_bytes``). A request's probe is
        then left out, and so is a half-open breaker's (the request is its trial): the
        probe would share the link with the request's own upload, and each would see
        about half the rate. In the replays of issue 25 the upload's watch read half the
        link's rate and gave the upload up when it would have met its SLO, and the
        reading and the probe's slow transfer dragged the estimate down, which put the
        estimate in question again, which asked for another probe."""
        return cand.kind != LOCAL and cand.up_bytes >= self.link.resolving_bytes()

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
            started = t0 = time.monotonic()
            saved_s = 0.0
            try:
                assert self.client is not None
                self.link.observe_rtt(self.client.ping())
                t0 = time.monotonic()
                r = self.client.infer(cand.cloud_model, feeds, None,
                                      deadline=t0 + self.policy.config.offload.timeout_ms / 1000)
                server_s = r.server_s if r.server_s is not None else cand.tail_ms * batch / 1000
                self.link.observe_transfer(r.up_bytes, r.down_bytes, r.seconds, server_s=server_s)
                # (the radio waits out the cloud's compute at the cloud's speed)
                saved_s = (r.server_s or 0.0) * (1.0 - self.cloud_compute_scale)
            except EdgecutError as exc:
                # A probe cut off by its deadline is evidence like any cloud leg's: on a
                # collapsed link it may be the first (see fold_cloud_failure).
                fold_cloud_failure(self.link, exc, nbytes, time.monotonic() - t0)
            finally:
                spent = max(time.monotonic() - started - saved_s, 0.0)
                self.probe_radio_s += spent
                self.spend_probe_energy(spent)

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
