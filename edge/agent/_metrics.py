"""The device's own figures on the local API's ``/metrics`` (beside the service's
``edgecut_*`` and Triton's ``nv_inference_*`` families), so a fleet dashboard can scrape
what until now travelled only in MQTT telemetry:

- ``edgecut_agent_decisions_total{model,plan}``: answered requests by the plan that ran
  them (``local``, ``offload``, ``split@<cut>``, ...);
- ``edgecut_agent_fallbacks_total{model}``, ``edgecut_agent_errors_total{model}``;
- ``edgecut_agent_energy_millijoules_total{model}`` and
  ``edgecut_agent_energy_per_request_millijoules{model}`` (the mean since start);
- ``edgecut_agent_link_bandwidth_bps{model}``, ``edgecut_agent_link_rtt_seconds{model}``,
  ``edgecut_agent_link_confidence{model}``: the link estimate of each planned model;
- ``edgecut_agent_power_watts{source}``: the power sensor's reading at the scrape
  (``ina3221``/``rapl`` measured, ``model`` the profile's figure).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from edge.agent._daemon import Agent


class AgentCollector:
    """A prometheus_client collector reading the agent at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Any]:
        agent = self._agent
        totals = agent.stats.totals()
        decisions = CounterMetricFamily("edgecut_agent_decisions", "Answered requests by the "
                                        "plan that ran them", labels=["model", "plan"])
        for (model, plan), n in sorted(totals["decisions"].items()):
            decisions.add_metric([model, plan], n)
        yield decisions
        for name, key, text in (
                ("edgecut_agent_fallbacks", "fallbacks",
                 "Requests a failed or late cloud leg sent back to the device"),
                ("edgecut_agent_errors", "errors", "Requests that failed"),
                ("edgecut_agent_energy_millijoules", "energy_mj",
                 "Device energy spent on answered requests")):
            family = CounterMetricFamily(name, text, labels=["model"])
            for model, value in sorted(totals[key].items()):
                family.add_metric([model], value)
            yield family
        per_request = GaugeMetricFamily("edgecut_agent_energy_per_request_millijoules",
                                        "Mean device energy per answered request since start",
                                        labels=["model"])
        for model, answered in sorted(totals["answered"].items()):
            if answered:
                per_request.add_metric([model], totals["energy_mj"].get(model, 0.0) / answered)
        yield per_request
        bandwidth = GaugeMetricFamily("edgecut_agent_link_bandwidth_bps",
                                      "Estimated link bandwidth to the cloud", labels=["model"])
        rtt = GaugeMetricFamily("edgecut_agent_link_rtt_seconds",
                                "Estimated round-trip time to the cloud", labels=["model"])
        confidence = GaugeMetricFamily("edgecut_agent_link_confidence",
                                       "Confidence of the link estimate (0..1)", labels=["model"])
        for model, planned in sorted(dict(agent.executors).items()):
            est = planned.executor.link.estimate()
            bandwidth.add_metric([model], est.bandwidth_bps)
            rtt.add_metric([model], est.rtt_s)
            confidence.add_metric([model], est.confidence)
        yield bandwidth
        yield rtt
        yield confidence
        sensor = getattr(agent, "_sensor", None)
        power = GaugeMetricFamily("edgecut_agent_power_watts", "Device power draw",
                                  labels=["source"])
        if sensor is not None:
            try:
                power.add_metric([str(getattr(sensor, "name", "sensor"))], sensor.read_w())
            except Exception:  # a sensor that fails one read must not fail the scrape
                pass
        yield power
