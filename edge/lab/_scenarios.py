"""Fault scenarios run for real against ``edgecut serve``: the cloud killed mid-run and
brought back (the circuit breaker), and a bandwidth drop through the link emulator."""


from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile
from devices.errors import EdgecutError
from edge.lab._costing import _seed_plan_table, measure_components
from edge.lab._emulator import LinkEmulator, Trace
from edge.lab._server import CloudServer, prepare_plan
from edge.offload._client import CircuitBreaker, OffloadClient
from edge.offload._executor import Executor
from edge.policy._config import PolicyConfig
from edge.policy._decide import Policy


def _feeds_for(executor: Executor, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    full = executor._session_for(executor.model_path)
    return {s.name: rng.standard_normal([d if d is not None else 1 for d in s.shape])
            .astype(s.dtype) for s in full.inputs}


def scenario_cloud_kill(model_path: str | Path, device: DeviceProfile, plan_dir: str | Path,
                        policy: PolicyConfig, *, before: int = 6, down: int = 8,
                        after: int = 10, breaker_reset_s: float = 1.0,
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Kill the cloud server mid-run and bring it back on the same port.

    Returns how many requests were lost (raised instead of answering; must be 0), how
    many fell back, whether every answer matched the local model's, the breaker's
    transitions, and whether offloading resumed after the cloud returned.
    """
    say = log or (lambda _m: None)
    plan = prepare_plan(model_path, device, plan_dir, log=say)
    srv = CloudServer(Path(plan_dir) / "repository").start()
    breaker = CircuitBreaker(policy.offload.breaker_failures, breaker_reset_s)
    client = OffloadClient(srv.url, timeout_s=5.0, breaker=breaker, max_retries=1)
    ex = Executor(plan, plan_dir, device, policy=Policy(policy), client=client,
                  compute_scale=1.0 / device.relative_speed, intra_op_threads=1)
    feeds = _feeds_for(ex)
    reference = ex._session_for(ex.model_path).run(feeds)
    ex.probe_link()
    records: list[dict[str, Any]] = []
    lost = 0
    wrong = 0

    def one(phase: str) -> None:
        nonlocal lost, wrong
        try:
            out = ex.infer(feeds)
        except EdgecutError as exc:  # a lost request
            lost += 1
            records.append({"phase": phase, "lost": repr(exc)})
            return
        for k, v in reference.items():
            if not np.allclose(out.outputs[k], v, rtol=1e-3, atol=1e-3):
                wrong += 1
                break
        records.append({"phase": phase, "plan": out.decision.plan, "executed": out.executed,
                        "fallback": out.fallback[:120], "latency_ms": round(out.latency_ms, 1),
                        "breaker": breaker.state})

    try:
        for _ in range(before):
            one("up")
        say("killing the cloud server")
        srv.kill()
        for _ in range(down):
            one("down")
        say("restarting the cloud server on the same port")
        srv = CloudServer(Path(plan_dir) / "repository", port=srv.port).start()
        t_back = time.monotonic()
        resumed_after = None
        for i in range(after):
            one("back")
            rec = records[-1]
            if resumed_after is None and "plan" in rec and rec["plan"] != "local" \
                    and not rec["fallback"]:
                resumed_after = i + 1
            if i == 0:
                # Let the breaker's pause run out so the half-open trial can happen.
                time.sleep(max(0.0, breaker_reset_s - (time.monotonic() - t_back)) + 0.05)
    finally:
        ex.close()
        client.close()
        srv.stop()
    remote_before = sum(1 for r in records if r["phase"] == "up" and r.get("plan") != "local")
    return {
        "requests": len(records), "lost": lost, "wrong_outputs": wrong,
        "fallbacks": sum(1 for r in records if r.get("fallback")),
        "remote_before_kill": remote_before,
        "breaker_transitions": [s for _, s in breaker.transitions],
        "breaker_recovered": breaker.state == "closed" and "open" in
        [s for _, s in breaker.transitions],
        "offload_resumed_after_requests": resumed_after,
        "records": records,
    }


def scenario_bandwidth_drop(model_path: str | Path, device: DeviceProfile,
                            plan_dir: str | Path, policy: PolicyConfig, *,
                            high_bps: float = 50e6, low_bps: float = 1e6,
                            before: int = 10, after: int = 12, rtt_s: float = 0.02,
                            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Drop the emulated link from ``high_bps`` to ``low_bps`` mid-run (through the
    emulator and a real server) and count the requests until the plan changes."""
    say = log or (lambda _m: None)
    plan = prepare_plan(model_path, device, plan_dir, log=say)
    # The step happens at trace time 1e6 s; the clock is moved there when it is time.
    trace = Trace.from_steps([(0.0, high_bps), (1e6, low_bps)], 2e6, "drop")
    records: list[dict[str, Any]] = []
    with CloudServer(Path(plan_dir) / "repository") as srv:
        emu = LinkEmulator("127.0.0.1", srv.port, up=trace, delay_s=rtt_s / 2).start()
        client = OffloadClient(emu.url, timeout_s=30.0)
        ex = Executor(plan, plan_dir, device, policy=Policy(policy), client=client,
                      compute_scale=1.0 / device.relative_speed, intra_op_threads=1,
                      clock=lambda: emu.trace_time())
        feeds = _feeds_for(ex)
        ex.warm_up()
        with OffloadClient(srv.url, timeout_s=60.0) as direct:
            comps = measure_components(ex, direct, feeds, device.relative_speed)
        _seed_plan_table(ex, comps, policy, lambda: emu.trace_time())
        ex.probe_link()
        try:
            for i in range(before + after):
                if i == before:
                    say(f"dropping the link to {low_bps / 1e6:g} Mbit/s")
                    emu.restart_clock(1e6)
                out = ex.infer(feeds)
                records.append({"i": i, "phase": "high" if i < before else "low",
                                "rate_mbps": emu.rate_now_bps() / 1e6,
                                "plan": out.decision.plan, "executed": out.executed,
                                "latency_ms": round(out.latency_ms, 1),
                                "link_mbps": round(out.link_bps / 1e6, 3),
                                "fallback": out.fallback[:100]})
        finally:
            ex.close()
            client.close()
            emu.stop()
    high_plans = [r["plan"] for r in records if r["phase"] == "high"]
    settled = high_plans[-1] if high_plans else ""
    changed_after = None
    for r in records[before:]:
        if r["plan"] != settled:
            changed_after = r["i"] - before + 1
            break
    return {"plan_at_high": settled, "plans_after_drop": [r["plan"] for r in records[before:]],
            "changed_after_requests": changed_after, "records": records}
