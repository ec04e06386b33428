"""Thousands of malformed requests: never a 5xx other than 503, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import HEADER_LENGTH, InferenceService, ServerThread, create_app, encode_infer_request
from tests.cloud.conftest import affine_model, typed_model, write_version, x_batch
from tests.conftest import free_port

DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
             "FP16", "FP32", "FP64", "BYTES"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True), st.text(max_size=5))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=6)
                           | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=20)
shapes = st.one_of(st.lists(st.integers(-2, 10), max_size=4),
                   st.lists(st.integers(0, 2**64), max_size=3), json_values)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["x", "i8", "b", "f16", ""]), json_values),
        "datatype": st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6), json_values),
        "shape": shapes,
        "data": st.one_of(st.lists(scalars, max_size=10), json_values),
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-5, 64), json_values)}),
            json_values),
    },
)
message = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.one_of(st.lists(tensor, max_size=3), json_values),
        "outputs": st.one_of(st.lists(st.fixed_dictionaries(
            {"name": st.one_of(st.sampled_from(["y", "z", "q"]), json_values)},
            optional={"parameters": json_values}), max_size=3), json_values),
        "parameters": st.one_of(st.dictionaries(st.sampled_from(["binary_data_output", "x"]),
                                                json_values), json_values),
    },
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-repo")
    write_version(root, "affine", 1, affine_model(1.0))
    write_version(root, "typed", 1, typed_model())
    service = InferenceService(root, intra_op_threads=1)
    service.load_all()
    server = ServerThread(create_app(service, max_body_bytes=1 << 16), port=free_port())
    server.start()
    client = httpx.Client(base_url=server.url, timeout=10)
    yield client
    client.close()
    server.stop()
    service.close()


ALLOWED = {200, 400, 404, 405, 413, 503}


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    model=st.sampled_from(["affine", "typed", "affine/versions/1", "affine/versions/x", "nope"]),
    msg=message,
    tail=st.binary(max_size=64),
    header_len=st.one_of(st.none(), st.integers(-3, 600),
                       st.text(alphabet="0123456789abc-+.", min_size=1, max_size=4)),
    mangle=st.sampled_from(["none", "truncate", "raw-bytes"]),
)
def test_malformed_requests_never_break_the_server(fuzz_server, model, msg, tail, header_len, mangle):
    header = json.dumps(msg).encode()
    body = header + tail
    headers = {}
    if header_len is not None:
        headers[HEADER_LENGTH] = str(header_len) if not isinstance(header_len, int) else str(
            len(header) if header_len == 0 else header_len)
    if mangle == "truncate":
        body = body[: len(body) // 2]
    elif mangle == "raw-bytes":
        body = tail
    # Each example sends two requests (3000 in all): as mangled, and correctly framed as
    # the binary extension around the same random message and tail.
    framed = (header + tail, {HEADER_LENGTH: str(len(header))})
    for content, hdrs in ((body, headers), framed):
        r = fuzz_server.post(f"/v2/models/{model}/infer", content=content, headers=hdrs)
        assert r.status_code in ALLOWED, (r.status_code, r.text, content[:200], hdrs)
        if r.status_code != 200:
            assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_still_serving_after_the_fuzz(fuzz_server):
    body, headers = encode_infer_request({"x": x_batch(2)})
    assert fuzz_server.post("/v2/models/affine/infer", content=body, headers=headers).status_code == 200
