"""Which plan of a chain the device runs now: the one wanted, unless its hop is down.

The device talks to the first node after it; every later node is reached through that
one (a middle node relays, ``cloud._relay``). So the first hop's circuit breaker -- the
offload client's own :class:`CircuitBreaker`, configured by ``policy.toml``'s
``[offload]`` ``breaker_failures`` and ``breaker_reset_s`` exactly as for a single-hop
offload -- says whether a plan that sends anything off the device may run:

* closed: the wanted plan runs;
* open (``breaker_failures`` failures in a row): every plan that needs the hop is
  excluded and the device's own plan runs instead, so no request pays a failed attempt
  for the rest of ``breaker_reset_s``;
* half-open (the pause is over): the wanted plan goes again as the breaker's one trial;
  the client takes the trial itself (``allow()`` in its ``infer``), so this module only
  reads ``state``. An answer closes the breaker, a failure (the frame falls back on the
  device) opens it for another pause.

A node further down that fails is not seen from here: the node before it finishes the
model itself and the request is answered (``cloud._relay``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from devices.errors import ConfigError
from edge.offload._client import OPEN, CircuitBreaker


@dataclass(frozen=True)
class ChainRoute:
    """The plan to run (``plan``), the one the planner wanted (``wanted``), the node
    whose open breaker excluded the wanted plan (``hop_down``; ``None`` when it runs)
    and the breaker's state when the choice was made."""

    plan: str
    wanted: str
    hop_down: str | None
    breaker: str


class ChainRouter:
    """Routes a chain's requests around a first hop that is down (module docstring).

    ``nodes``: the chain's node names, the device first. ``uses``: plan id -> the names
    of the nodes that plan runs layers on. ``device_plan``: the id of a plan that runs
    every layer on the device (what runs while the hop is down). ``breaker``: the
    breaker of the client that sends to ``nodes[1]``."""

    def __init__(self, nodes: Sequence[str], uses: Mapping[str, Sequence[str]], device_plan: str,
                 breaker: CircuitBreaker) -> None:
        if len(nodes) < 2:
            raise ConfigError(f"chain router: a chain has at least two nodes, got {list(nodes)}")
        if device_plan not in uses or set(uses[device_plan]) - {nodes[0]}:
            raise ConfigError(f"chain router: device plan {device_plan!r} must run only on "
                              f"{nodes[0]!r}, it uses {list(uses.get(device_plan, ['nothing']))}")
        self.nodes = tuple(nodes)
        self.uses = {k: tuple(v) for k, v in uses.items()}
        self.device_plan = device_plan
        self.breaker = breaker

    def needs_hop(self, plan: str) -> bool:
        """Does ``plan`` send anything off the device (through the first hop)?"""
        if plan not in self.uses:
            raise ConfigError(f"chain router: unknown plan {plan!r} (known: {sorted(self.uses)})")
        return any(n != self.nodes[0] for n in self.uses[plan])

    def route(self, wanted: str) -> ChainRoute:
        """The plan to run for a request whose planner wants ``wanted``."""
        state = self.breaker.state
        if self.needs_hop(wanted) and state == OPEN:
            return ChainRoute(self.device_plan, wanted, self.nodes[1], state)
        return ChainRoute(wanted, wanted, None, state)


__all__ = ["ChainRoute", "ChainRouter"]
