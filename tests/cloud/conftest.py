"""Fixtures for the cloud service tests: tiny ONNX models, repositories, live servers, keys."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from onnx import TensorProto, helper

from cloud import InferenceService, ServerThread, TokenVerifier, create_app
from cloud._gate import Gate
from cloud._shm import SharedMemoryRegistry
from cloud.grpc import GrpcServer
from tests.conftest import free_port
from tests.onnx_files import make_model, save_model


def affine_model(bias: float, width: int = 4, batched: bool = True) -> onnx.ModelProto:
    """y = 2 * x + bias; the bias tells which version answered."""
    first = "N" if batched else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, width])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [first, width])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    b = helper.make_tensor("b", TensorProto.FLOAT, [], [bias])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"], name="double"),
         helper.make_node("Add", ["t", "b"], ["y"], name="shift"),
         helper.make_node("Neg", ["x"], ["z"], name="negate")],
        "affine", [x], [y, z], [two, b],
    )
    model = make_model(graph)
    onnx.checker.check_model(model)
    return model


def typed_model() -> onnx.ModelProto:
    """Identity-like outputs over several datatypes (unbatched, fixed shapes)."""
    specs = [("i8", TensorProto.INT8), ("u16", TensorProto.UINT16), ("i64", TensorProto.INT64),
             ("f16", TensorProto.FLOAT16), ("f64", TensorProto.DOUBLE), ("b", TensorProto.BOOL)]
    inputs = [helper.make_tensor_value_info(n, t, [2, 3]) for n, t in specs]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, [2, 3]) for n, t in specs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _ in specs]
    model = make_model(helper.make_graph(nodes, "typed", inputs, outputs))
    return model


def write_version(repo: Path, name: str, version: int, model: onnx.ModelProto) -> Path:
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    tmp = folder / "model.onnx.tmp"
    save_model(model, tmp)
    os.replace(tmp, path)  # atomic, so a concurrent load never reads half a file
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with ``affine`` (versions 1 and 2, latest 2 served) and ``typed``."""
    root = tmp_path / "repo"
    write_version(root, "affine", 1, affine_model(1.0))
    write_version(root, "affine", 2, affine_model(2.0))
    (root / "affine" / "config.pbtxt").write_text(
        'name: "affine"\nmax_batch_size: 8\n'
        "version_policy: { latest: { num_versions: 2 } }\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 preferred_batch_size: [4, 8] }\n"
    )
    write_version(root, "typed", 1, typed_model())
    return root


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """``serve(service, **create_app kwargs)`` starts a real uvicorn server on a free port."""
    started: list[tuple[ServerThread, InferenceService]] = []

    def start(service: InferenceService, limit_concurrency: int = 1024, **kwargs) -> ServerThread:
        server = ServerThread(create_app(service, **kwargs), port=free_port(),
                              limit_concurrency=limit_concurrency)
        server.start()
        started.append((server, service))
        return server

    yield start
    for server, service in started:
        server.stop()
        service.close()


@pytest.fixture
def server(repo: Path, serve) -> ServerThread:
    service = InferenceService(repo, intra_op_threads=1, max_queue_size=64)
    service.load_all()
    return serve(service)


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, bytes | Path]:
    """An EC and an RSA device-signing key pair (public keys in a folder) and a stranger."""
    folder = tmp_path_factory.mktemp("auth-keys")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = ec.generate_private_key(ec.SECP256R1())
    (folder / "fleet-ec.pem").write_bytes(_pem_public(ec_key))
    (folder / "fleet-rsa.pem").write_bytes(_pem_public(rsa_key))
    private = tmp_path_factory.mktemp("private") / "ec.pem"
    private.write_bytes(_pem_private(ec_key))
    return {
        "folder": folder,
        "ec": _pem_private(ec_key),
        "rsa": _pem_private(rsa_key),
        "stranger": _pem_private(stranger),
        "ec_public": _pem_public(ec_key),
        "ec_private_path": private,
    }


@pytest.fixture
def verifier(keys) -> TokenVerifier:
    return TokenVerifier.from_folder(keys["folder"], audience="edgecut-test", issuers=["fleet"])


def x_batch(n: int = 1, width: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


class GrpcStack:
    """An HTTP and a gRPC server over one service, gate and set of shm regions."""

    def __init__(self, service: InferenceService, **gate_kwargs) -> None:
        self.service = service
        self.gate = Gate(**gate_kwargs)
        self.shm = SharedMemoryRegistry()
        self.grpc = GrpcServer(service, gate=self.gate, shm=self.shm, port=0)
        app = create_app(service, gate=self.gate, shared_memory=self.shm)
        self.http = ServerThread(app, port=free_port(), companions=[self.grpc]).start()
        self.target = self.grpc.target

    def client(self) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(self.target)

    def close(self) -> None:
        self.http.stop()
        self.service.close()


@pytest.fixture
def stacks():
    made: list[GrpcStack] = []

    def make(service: InferenceService, **gate_kwargs) -> GrpcStack:
        stack = GrpcStack(service, **gate_kwargs)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()
