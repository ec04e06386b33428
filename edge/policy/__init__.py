"""Where a request is decided: local, offload or split, from the plan and measured state.

Owns: the pure decision function (``_decide``) over its inputs and outputs (``_state``), the
cost table corrected online (``_costs``), the link estimator (``_link``) and ``policy.toml``
(``_config``). See ``docs/policy.md``.
May import: ``partition`` (plans and cuts), ``devices`` (energy model), the standard
library; never the network, the runtime or the agent.
"""

from __future__ import annotations

from edge.policy._config import (
    OBJECTIVES,
    DeviceSettings,
    ExploreSettings,
    LearningSettings,
    LinkSettings,
    OffloadSettings,
    PolicyConfig,
    PolicyConfigWatcher,
    Rules,
    load_policy_config,
    parse_policy_config,
    policy_config_from_text,
)
from edge.policy._costs import CostTable
from edge.policy._decide import Policy, decide, lookahead_probe
from edge.policy._link import LinkEstimate, LinkEstimator
from edge.policy._state import (
    CloudState,
    CutEstimate,
    Decision,
    DeviceState,
    PolicyContext,
    Prediction,
)

#: Validate ``policy.toml`` text (an alias kept for the docs and the fleet link).
load_policy_text = policy_config_from_text

__all__ = [
    "OBJECTIVES",
    "CloudState",
    "CostTable",
    "CutEstimate",
    "Decision",
    "DeviceSettings",
    "DeviceState",
    "ExploreSettings",
    "LearningSettings",
    "LinkEstimate",
    "LinkEstimator",
    "LinkSettings",
    "OffloadSettings",
    "Policy",
    "PolicyConfig",
    "PolicyConfigWatcher",
    "PolicyContext",
    "Prediction",
    "Rules",
    "decide",
    "load_policy_config",
    "load_policy_text",
    "lookahead_probe",
    "parse_policy_config",
    "policy_config_from_text",
]
