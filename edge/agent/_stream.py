"""The agent's streaming entry point: ``<model>.stream`` on the local API.

Each frame of a camera stream is one ordinary v2 inference request to ``<model>.stream``
(HTTP or the Unix socket, binary tensors, shared memory where the client uses it), sent
by the application with several in flight (``edge.Client.stream`` keeps ``window`` of
them and hands results back in order). Behind the name, all of a model's frames go
through one :class:`edge.offload.StreamPipeline` planned for throughput: the device
computes frame n+1's head while frame n uploads and frame n-1 runs in the cloud. The
service gives each of the ``window`` runtime instances its own thread, so that
many frames wait on the pipeline at once. ``[stream]`` in agent.toml sets the window, the
queue, the overload policy and the re-plan period.

Plan: ``partition.choose_stream`` over the model's plan with the executor's current link
estimate and the policy's SLO (``slo_ms``; none: the highest rate), re-chosen every
``replan_every`` frames, so a running stream follows the link without losing or
reordering frames; a cloud leg that had the link to itself is fed to the link estimate.
Overload: the service runs at most ``window`` frames of a model at once (one per
instance) and by default the pipeline's queue holds that many, so frames are held back,
not dropped, at the agent; should one still be dropped (``drop_oldest``), its request is
answered 503 saying so and counted. Dropping for freshness is the application's choice,
made in ``edge.Client.stream(overload="drop_oldest")``.

The policy's SLO also bounds each frame's latency in the pipeline (``slo_ms`` of
``StreamPipeline``): a frame starts only when, behind the frames in flight, it is
predicted to finish within the SLO, so frames are not queued behind a slow stage past
it; under ``drop_oldest`` a frame that waited too long is dropped (503, saying so).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cloud._runtime import ModelRuntime
from devices.errors import EdgecutError

STREAM_SUFFIX = ".stream"
DROPPED_MESSAGE = "frame dropped by the stream's overload policy (drop_oldest)"


class AgentStreams:
    """One stream pipeline per model with a plan, built on first use."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent
        self._pipes: dict[str, tuple[Any, Any]] = {}  # model -> (executor, pipeline)
        self._lock = threading.Lock()
        self.dropped: dict[str, int] = {}

    def pipeline(self, name: str) -> Any | None:
        """The model's pipeline, or None when it has no plan (frames then run one by one
        through the agent's usual path)."""
        planned = self._agent.executors.get(name)
        if planned is None:
            return None
        ex = planned.executor
        with self._lock:
            got = self._pipes.get(name)
            if got is not None and got[0] is ex:
                return got[1]
            if got is not None:  # the plan or model changed: a fresh pipeline
                got[1].close(timeout_s=30.0)
            pipe = self._build(ex)
            self._pipes[name] = (ex, pipe)
            return pipe

    def _build(self, ex: Any) -> Any:
        from edge.offload import StreamPipeline
        from partition import choose_stream

        slo = self._agent.policy_config.slo_ms or None
        device = ex.device

        def choose() -> Any:
            link = ex.link.estimate(time.monotonic())
            return choose_stream(ex.plan.candidates, link.bandwidth_bps, link.rtt_s, device,
                                 slo_ms=slo).candidate

        def observe(result: Any) -> None:
            server_s = result.server_s if result.server_s is not None else 0.0
            ex.link.observe_transfer(result.up_bytes, result.down_bytes, result.seconds,
                                     server_s=server_s)

        cfg = self._agent.config.stream
        return StreamPipeline(ex.plan_dir, ex.model_path, choose(), device, ex.client,
                              ex.output_names, window=cfg.window, queue_size=cfg.queue_size,
                              overload=cfg.overload, chooser=choose, replan_every=cfg.replan_every,
                              on_alone_leg=observe, slo_ms=slo,
                              uplink_bps=lambda: ex.link.estimate(time.monotonic()).bandwidth_bps)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            pipes = dict(self._pipes)
        return {name: {"submitted": p.stats.submitted, "dropped": p.stats.dropped,
                       "late": p.stats.late,
                       "fallbacks": p.stats.fallbacks, "errors": p.stats.errors,
                       "replans": p.stats.replans, "plan": p.candidate.cut_id}  # type: ignore[dict-item]
                for name, (_ex, p) in pipes.items()}

    def close(self) -> None:
        with self._lock:
            pipes, self._pipes = dict(self._pipes), {}
        for _ex, p in pipes.values():
            p.close(timeout_s=30.0)


class StreamModelRuntime(ModelRuntime):
    """``<model>.stream``: one frame per request through the model's stream pipeline."""

    max_batch_size = 0
    platform = "edgecut_stream"

    def __init__(self, base: ModelRuntime, name: str, streams: AgentStreams,
                 run_one: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self._base = base  # the model's own runtime: its signature, its path without a plan
        self.name = name
        self._streams = streams
        self._run_one = run_one

    @property
    def inputs(self) -> Any:  # type: ignore[override]
        return self._base.inputs

    @property
    def outputs(self) -> Any:  # type: ignore[override]
        return self._base.outputs

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cloud.errors import ExecutionError, Overloaded

        try:
            pipe = self._streams.pipeline(self.name)
        except EdgecutError as exc:
            raise ExecutionError(f"stream for {self.name!r}: {exc}") from exc
        if pipe is None:
            return self._run_one(inputs)
        seq = pipe.submit(inputs)
        res = pipe.result(seq)
        if res is None or res.status == "dropped":
            raise Overloaded(f"{self.name}{STREAM_SUFFIX}: {res.error if res and res.error else DROPPED_MESSAGE}")
        if res.status == "error":
            raise ExecutionError(f"{self.name}{STREAM_SUFFIX}: {res.error}")
        return res.outputs
