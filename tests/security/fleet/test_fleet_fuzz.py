"""Every deploy, config and command topic fuzzed with hostile names and values (``..``,
``/``, non-ASCII digits, NUL, huge numbers, wrong types), signed and unsigned: each message
is answered, nothing outside the store changes, and the agent serves on."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.agent._signing import CONFIG_TYPE, DEPLOY_TYPE, sign
from tests.security.fleet.conftest import Device

_HOSTILE = st.sampled_from(["..", ".", "../..", "/", "/etc/passwd", "a/../../b", "\x00",
                            "tiny\x00", "٣", "１", "tiny\n", "-rf", ".incoming", "state.json",
                            "tiny", "2", "a" * 65, "", " ", "%2e%2e", "C:\\x", "ｔｉｎｙ"])
_NAMES = st.one_of(_HOSTILE, st.text(max_size=12),
                   st.text(alphabet="./\\\x00-_a1٣", max_size=8))
_NUMBERS = st.one_of(st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                     st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
                         [0, -1, 1e9, 1e308, 2 ** 63, 2 ** 53 + 1]))
_VALUES = st.one_of(_NAMES, _NUMBERS, st.booleans(), st.none(),
                    st.lists(_NAMES, max_size=3), st.dictionaries(_NAMES, _NAMES, max_size=2))

_deploy = st.fixed_dictionaries({}, optional={
    "model": _VALUES, "version": _VALUES, "sha256": st.one_of(_VALUES, st.just("a" * 64)),
    "url": st.one_of(_VALUES, st.sampled_from(["file:///etc/shadow", "https://127.0.0.1:1/x",
                                               "http://127.0.0.1:1/x", "ftp://x/y"])),
    "path": st.one_of(_VALUES, st.sampled_from(["/etc/shadow", "../decoy/victim.txt"])),
    "size": _NUMBERS, "probation_s": _NUMBERS, "allow_interface_change": _VALUES,
    "signature": _VALUES, "signed": _VALUES})
_config = st.fixed_dictionaries({}, optional={
    "version": _VALUES,
    "config": st.one_of(_VALUES, st.fixed_dictionaries({}, optional={
        "updates": st.dictionaries(st.sampled_from(["public_key_file", "probation_s",
                                                    "source_dir", "keep_versions"]), _VALUES,
                                   max_size=2),
        "cloud": st.dictionaries(st.sampled_from(["url", "token_file", "timeout_s"]), _VALUES,
                                 max_size=2),
        "agent": st.dictionaries(st.sampled_from(["data_dir", "log_level"]), _VALUES,
                                 max_size=1),
        "models": _VALUES})),
    "policy": _VALUES, "signed": _VALUES})
_cmd = st.fixed_dictionaries({}, optional={
    "command": st.one_of(_VALUES, st.sampled_from(["rollback", "reprofile", "status",
                                                   "reload", "ping", "telemetry"])),
    "model": _VALUES, "extra": _VALUES})
# Documents with a valid signature and hostile fields: the parser behind the signature.
_doc = st.fixed_dictionaries({"type": st.sampled_from(["deploy", "config", "x"])}, optional={
    "model": _VALUES, "version": _VALUES, "sha256": _VALUES, "size": _NUMBERS,
    "counter": _NUMBERS, "issued_at": _NUMBERS, "expires_at": _NUMBERS, "devices": _VALUES,
    "config": _VALUES, "policy": _VALUES})

_ids = itertools.count()
_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


def _send(dev: Device, topic: str, msg: dict) -> dict:
    # NaN and infinities go out as JSON's common extension (NaN, Infinity), which the
    # agent's decoder reads: they reach the field checks.
    return dev.send(topic, {**msg, "id": f"fz-{next(_ids)}"}, timeout=30.0)


def _check(dev: Device, outside: dict) -> None:
    assert dev.agent.fleet.connected.is_set()
    assert dev.outside() == outside
    assert set(dev.agent.slots) == {"tiny"}
    assert dev.agent.slots["tiny"].current.version == "1"


def test_fuzzed_deploys(device: Device) -> None:
    outside = device.outside()

    @_SETTINGS
    @given(msg=_deploy)
    def run(msg: dict) -> None:
        ack = _send(device, "models/deploy", msg)
        assert ack["ok"] is False, ack
        _check(device, outside)

    run()
    device.alive()


def test_fuzzed_configs(device: Device) -> None:
    outside = device.outside()
    security = device.agent.config.updates, device.agent.config.cloud

    @_SETTINGS
    @given(msg=_config)
    def run(msg: dict) -> None:
        _send(device, "config/set", msg)
        assert (device.agent.config.updates.public_key_file, device.agent.config.cloud) == (
            security[0].public_key_file, security[1])
        _check(device, outside)

    run()
    device.alive()


def test_fuzzed_commands(device: Device) -> None:
    outside = device.outside()

    @_SETTINGS
    @given(msg=_cmd)
    def run(msg: dict) -> None:
        _send(device, "cmd", msg)
        _check(device, outside)

    run()
    device.alive()


def test_fuzzed_signed_documents(device: Device) -> None:
    outside = device.outside()

    @_SETTINGS
    @given(doc=_doc, kind=st.sampled_from(["deploy", "config"]),
           path=st.sampled_from(["/etc/shadow", "x.onnx", "../decoy/victim.txt"]))
    def run(doc: dict, kind: str, path: str) -> None:
        try:
            env = sign(device.key, DEPLOY_TYPE if kind == "deploy" else CONFIG_TYPE, doc)
        except ValueError:
            return  # NaN has no JSON form: the operator's tool cannot sign it either
        if kind == "deploy":
            ack = _send(device, "models/deploy", {"signed": env, "path": path})
            assert ack["ok"] is False, ack
        else:
            # A document that passes every check is the operator's word and may apply.
            _send(device, "config/set", {"signed": env})
        _check(device, outside)

    run()
    device.alive()
