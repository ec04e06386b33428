"""The policy engine's public face: decide local, offload or split per request.

See :mod:`edge._policy` for the reasoning order and ``docs/policy.md`` for the
``policy.toml`` reference.
"""

from __future__ import annotations

from edge._link import LinkEstimate, LinkEstimator
from edge._policy import (
    CloudState,
    CostTable,
    CutEstimate,
    Decision,
    DeviceState,
    Policy,
    PolicyContext,
    Prediction,
    decide,
    lookahead_probe,
)
from edge._policy_config import (
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
