from __future__ import annotations

import os
from pathlib import Path

import pytest

import edge
from devices import ConfigError
from edge.policy import (
    Policy,
    PolicyConfig,
    PolicyConfigWatcher,
    load_policy_config,
    parse_policy_config,
    policy_config_from_text,
)


def test_example_file_is_valid_and_matches_defaults() -> None:
    path = Path(edge.__file__).parent / "data" / "policy.example.toml"
    cfg = load_policy_config(path)
    default = PolicyConfig()
    assert cfg.slo_ms == 200.0 and cfg.rules.battery_reserve_pct == 20.0
    # every other value in the example is the documented default
    assert cfg.link == default.link and cfg.explore == default.explore
    assert cfg.offload == default.offload and cfg.device == default.device
    assert cfg.learning == default.learning and cfg.objective == default.objective


def test_units_are_converted() -> None:
    cfg = policy_config_from_text(
        "[link]\nprior_bandwidth_mbps = 2\nprior_rtt_ms = 30\n[explore]\nprobe_kib = 8\n")
    assert cfg.link.prior_bandwidth_bps == 2e6
    assert cfg.link.prior_rtt_s == pytest.approx(0.03)
    assert cfg.explore.probe_bytes == 8192


@pytest.mark.parametrize("text, message", [
    ('objective = "fastest"', "key 'objective': expected one of 'latency', 'energy', 'weighted'"),
    ('objective = "energy"', "the 'energy' objective needs a latency SLO"),
    ("slo_ms = -1", "key 'slo_ms': expected a value >= 0.0"),
    ('slo_ms = "fast"', "key 'slo_ms': expected a number"),
    ("latency_weight = 2", "key 'latency_weight': expected a value <= 1.0"),
    ("[rules]\nnever_send_raw_input = 1", "key 'never_send_raw_input': expected a boolean"),
    ("[rules]\nbattery_reserve = 20", "unknown key(s) 'battery_reserve'"),
    ("sloms = 100", "unknown key(s) 'sloms'"),
    ("[explore]\nrate = 1.5", "key 'rate': expected a value <= 1.0"),
    ('[device]\ncompute = "npu"', "key 'compute': expected one of 'auto', 'gpu', 'cpu'"),
    ("rules = 3", "key 'rules': expected a table"),
    ("slo_ms = ", "not valid TOML"),
])
def test_errors_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        policy_config_from_text(text, "site/policy.toml")
    assert "site/policy.toml" in str(err.value)
    assert message in str(err.value)


def _rewrite(path: Path, text: str) -> None:
    # Write then rename, as a config manager would, and make sure the stamp changes.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_hot_reload_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('objective = "latency"\nslo_ms = 100\n')
    changes: list[PolicyConfig] = []
    errors: list[ConfigError] = []
    watcher = PolicyConfigWatcher(path, check_interval_s=0.0, on_change=changes.append,
                                  on_error=errors.append)
    policy = Policy(watcher)
    assert policy.config.slo_ms == 100

    _rewrite(path, 'objective = "energy"\nslo_ms = 250\n')
    assert policy.config.objective == "energy" and policy.config.slo_ms == 250
    assert len(changes) == 1 and watcher.reloads == 1

    _rewrite(path, 'objective = "energy"\nslo_ms = 0\n')  # invalid: energy needs an SLO
    cfg = policy.config
    assert cfg.objective == "energy" and cfg.slo_ms == 250  # last good stays in force
    assert watcher.last_error is not None and "needs a latency SLO" in str(watcher.last_error)
    assert len(errors) == 1

    path.unlink()  # a vanished file is an error too, and the config stays
    assert not watcher.check()
    assert policy.config.slo_ms == 250

    _rewrite(path, "slo_ms = 50\n")
    assert policy.config.slo_ms == 50 and policy.config.objective == "latency"
    assert watcher.last_error is None


def test_watcher_checks_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("slo_ms = 10\n")
    watcher = PolicyConfigWatcher(path, check_interval_s=3600.0)
    _rewrite(path, "slo_ms = 20\n")
    assert watcher.config.slo_ms == 10  # not re-checked within the interval
    assert watcher.check() and watcher.config.slo_ms == 20


def test_first_file_must_be_valid(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        PolicyConfigWatcher(path)
    with pytest.raises(ConfigError, match="file not found"):
        PolicyConfigWatcher(tmp_path / "missing.toml")
    assert parse_policy_config({}).objective == "latency"
