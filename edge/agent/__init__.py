"""The agent daemon: local API, ``agent.toml``, the MQTT fleet link, spool and updates.

Owns: the long-running process on the device (``Agent`` and ``AgentServer``), its config
file and overlay, where a fleet message is handled (``_fleet`` receives, ``Agent`` acts),
the telemetry spool and signed model updates.
May import: every other room of ``edge`` except ``edge.lab`` and ``edge.cli``, ``partition``,
``devices``, and ``cloud``'s protocol core for the local API.
"""

from __future__ import annotations

from edge.agent._config import AgentConfig, load_agent_config, parse_agent_config
from edge.agent._daemon import Agent, AgentServer, run_agent

__all__ = ["Agent", "AgentConfig", "AgentServer", "load_agent_config", "parse_agent_config", "run_agent"]
