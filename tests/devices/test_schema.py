"""devices.schema: one declaration per setting gives the parser, the docs and the example."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from devices.config import parse_toml
from devices.errors import ConfigError
from devices.schema import docs_tables, example_toml, parse, section, setting


@dataclass(frozen=True)
class _Inner:
    size_bytes: int = setting(4096, "a size", key="size_kib", unit="KiB", scale=1024,
                              kind=float, min=0.0)
    mode: str = setting("a", "a mode", choices=("a", "b"))


@dataclass(frozen=True)
class _Outer:
    rate_bps: float = setting(2e6, "a rate", key="rate_mbps", unit="Mbit/s", scale=1e6,
                              min=0.5, max=100.0)
    on: bool = setting(True, "a switch", note="short note")
    inner: _Inner = section(_Inner, "The inner table.")
    source: str = ""


def test_defaults_come_from_the_declaration_and_units_are_scaled() -> None:
    cfg = parse(_Outer, {}, "x.toml", extra={"source": "x.toml"})
    assert cfg == _Outer(source="x.toml")
    cfg = parse(_Outer, parse_toml("rate_mbps = 3\n[inner]\nsize_kib = 1.5\n", "x"), "x.toml")
    assert cfg.rate_bps == 3e6 and cfg.inner.size_bytes == 1536
    assert isinstance(cfg.inner.size_bytes, int)


@pytest.mark.parametrize("text, error", [
    ("rate_mbps = 0.1\n", "x.toml: key 'rate_mbps': expected a value >= 0.5, got 0.1"),
    ("rate_mbps = 'fast'\n", "key 'rate_mbps': expected a number"),
    ("on = 1\n", "key 'on': expected a boolean"),
    ("[inner]\nmode = 'c'\n", "x.toml [inner]: key 'mode': expected one of 'a', 'b'"),
    ("[inner]\nsize = 3\n", "x.toml [inner]: unknown key(s) 'size'"),
    ("[inner]\nsize_kb = 3\n", "x.toml [inner]: key 'size_kb' was renamed to 'size_kib'"),
    ("rate_bps = 3\n", "x.toml: key 'rate_bps' was renamed to 'rate_mbps'"),
])
def test_bad_input_is_named_with_the_file_and_the_key(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(_Outer, parse_toml(text, "x"), "x.toml",
              renamed={"inner.size_kb": "size_kib", "rate_bps": "rate_mbps"})
    assert error in str(info.value)


def test_docs_and_example_follow_the_declaration() -> None:
    tables = docs_tables(_Outer)
    assert "| `rate_mbps` | number 0.5..100 | `2` | Mbit/s | a rate |" in tables
    assert "### `[inner]`\n\nThe inner table." in tables
    assert "| `size_kib` | number | `4` | KiB | a size |" in tables
    example = example_toml(_Outer, "# header")
    assert example.startswith("# header\n\nrate_mbps = 2.0")
    assert "on = true" in example and "# short note" in example and "[inner]" in example
    assert parse(_Outer, parse_toml(example, "ex"), "ex") == _Outer()  # the example round-trips


def test_the_policy_example_holds_every_default() -> None:
    import dataclasses
    from pathlib import Path

    from edge.policy._config import PolicyConfig, load_policy_config

    path = Path(__file__).resolve().parents[2] / "edge" / "data" / "policy.example.toml"
    cfg = load_policy_config(path)
    # The two keys the example shows with an example value instead of the default.
    cfg = dataclasses.replace(cfg, slo_ms=0.0, source="",
                              rules=dataclasses.replace(cfg.rules, battery_reserve_pct=0.0))
    assert cfg == PolicyConfig()


def test_flags_name_keys_and_whole_tables_in_declaration_order() -> None:
    from devices.schema import flagged

    @dataclass(frozen=True)
    class Sub:
        a: int = setting(1, "a", flags=("restart",))

    @dataclass(frozen=True)
    class Root:
        top: bool = setting(False, "top", flags=("restart", "signed"))
        sub: Sub = section(Sub)
        locked: Sub = section(Sub, flags=("signed",))

    assert flagged(Root, "restart") == (("top",), ("sub", "a"), ("locked", "a"))
    assert flagged(Root, "signed") == (("top",), ("locked",))
    tables = docs_tables(Root, flag_notes={"restart": "restart only", "signed": "signed"})
    assert "| top (restart only; signed) |" in tables
    assert "### `[locked]`" in tables and "| a (signed; restart only) |" in tables


def test_the_agents_restart_and_signed_keys_come_from_its_schema() -> None:
    from edge.agent._config import RESTART_ONLY, SECURITY_KEYS

    assert ("api",) in RESTART_ONLY and ("mqtt", "tls") in RESTART_ONLY
    assert ("agent", "log_format") in RESTART_ONLY and ("cloud", "url") not in RESTART_ONLY
    assert ("cloud", "url") in SECURITY_KEYS and ("models",) in SECURITY_KEYS
    assert ("mqtt", "telemetry_interval_s") not in SECURITY_KEYS
