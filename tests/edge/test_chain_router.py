"""``edge.offload.ChainRouter``: a chain's plans routed around a first hop whose circuit
breaker (the offload client's own) is open, on a clock the test moves."""

from __future__ import annotations

import pytest

from devices.errors import ConfigError
from edge.offload import ChainRouter, CircuitBreaker

NODES = ["device", "edge", "cloud"]
USES = {"p0": ["device"], "p1": ["device", "edge"], "p2": ["edge", "cloud"], "p3": ["device", "cloud"]}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_open_breaker_excludes_every_plan_through_the_hop_until_the_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=5.0, clock=clock)
    router = ChainRouter(NODES, USES, "p0", breaker)
    for pid in USES:  # closed: every plan runs as wanted
        r = router.route(pid)
        assert (r.plan, r.wanted, r.hop_down, r.breaker) == (pid, pid, None, "closed")
    breaker.record_failure()
    assert router.route("p1").plan == "p1"  # one failure of two: still closed
    breaker.record_failure()
    clock.t = 4.9
    for pid in ("p1", "p2", "p3"):  # open: plans that leave the device run on it instead
        r = router.route(pid)
        assert (r.plan, r.wanted, r.hop_down, r.breaker) == ("p0", pid, "edge", "open")
    assert router.route("p0").plan == "p0" and router.route("p0").hop_down is None
    clock.t = 5.0  # the pause is over: the wanted plan goes as the trial
    r = router.route("p2")
    assert (r.plan, r.hop_down, r.breaker) == ("p2", None, "half-open")
    # the client takes the trial (allow) and it fails: open again for another pause
    assert breaker.allow()
    breaker.record_failure()
    clock.t = 9.0
    assert router.route("p2").plan == "p0"
    clock.t = 10.0
    assert router.route("p2").plan == "p2" and breaker.allow()
    breaker.record_success()  # the trial answered: closed, used again
    clock.t = 10.1
    assert router.route("p3").plan == "p3" and router.route("p3").breaker == "closed"


def test_router_reads_the_breaker_without_taking_the_clients_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    router = ChainRouter(NODES, USES, "p0", breaker)
    breaker.record_failure()
    clock.t = 1.0
    assert router.route("p1").plan == "p1" and router.route("p1").plan == "p1"
    assert breaker.allow()  # the client still gets the one trial
    assert not breaker.allow()


@pytest.mark.parametrize("nodes, uses, device_plan, words", [
    (["device"], USES, "p0", "at least two nodes"),
    (NODES, USES, "p1", "must run only on 'device'"),
    (NODES, USES, "p9", "must run only on 'device'"),
])
def test_router_rejects_bad_setup(nodes: list[str], uses: dict[str, list[str]], device_plan: str,
                                  words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ChainRouter(nodes, uses, device_plan, CircuitBreaker())


def test_router_names_an_unknown_plan() -> None:
    router = ChainRouter(NODES, USES, "p0", CircuitBreaker())
    with pytest.raises(ConfigError, match="unknown plan 'p7'"):
        router.route("p7")
