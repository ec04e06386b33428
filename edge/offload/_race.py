"""Racing: a remote plan's cloud leg and the device's own run of the rest of the request
at the same time, the first answer taken (``[offload] race``).

``_Racing`` is one of the jobs of :class:`~edge.offload._executor.Executor`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge.offload._client import UploadProgress
from edge.offload._outcome import Outcome
from edge.offload._sizing import UNSCALED, RequestScale
from edge.policy._decide import Decision
from partition import OFFLOAD, CutCandidate


class _Racing:
    """A raced request's two legs and which answered first."""

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
              head_ms: float, slo: float, started: float, device_ms_expected: float,
              scale: RequestScale = UNSCALED) -> Outcome:
        """Run the cloud leg and the device's own run of the rest of the request at the
        same time; the first answer is the request's. Once the device has answered, the
        cloud leg's upload is given up at its next held-back write, and the leg is cut
        off at ``[offload] race_cloud_span`` x the device's expected time in any case (what it
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
        # Where the cloud's compute is charged at a faster cloud's speed than the server
        # took (a replay's GPU-class cloud), the device is given the time that cloud
        # would have saved, so that the first answer is the one that would have come first.
        saving_s = self._uncharged_s(cand.cut_id)

        def run_device() -> None:
            try:
                outputs, ms = self._run_local(leg_path, leg_feeds)
                if leg_path == self.model_path:
                    self._observe_whole(ms, scale)
                with done:
                    state["device_ms"] = ms
                # A board slower than this host answers when its own time is up.
                cloud_won.wait(max(ms / 1000.0 + saving_s - (time.perf_counter() - t0), 0.0))
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
        # bound on the link ("at most this fast") if its upload was still going, or puts
        # the estimate in doubt (a probe checks it) if the path's buffers had swallowed
        # it whole (see fold_cloud_failure); left to run on, such a small upload would
        # wait out a slow link behind the next requests, and the estimate would hear
        # nothing of it meanwhile.
        span = self.policy.config.offload.race_cloud_span
        budget_ms = max(span * device_ms_expected, 50.0) + saving_s * 1000.0

        def run_cloud() -> None:
            t_cloud = time.perf_counter()
            try:
                result = client.infer(cand.cloud_model, crossing, self.output_names,
                                      deadline=time.monotonic() + budget_ms / 1000.0,
                                      request_id=f"{rid}", watch=watch)
            except Exception as exc:  # noqa: BLE001 - any failure leaves it to the device
                self._observe_cloud_failure(exc, crossing, time.perf_counter() - t_cloud,
                                            cand, scale)
                with done:
                    state["cloud_error"] = exc
                    done.notify_all()
                return
            self._observe_cloud(cand, result, scale)
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
            cloud_ms = self._cloud_seconds(result) * 1000.0
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
