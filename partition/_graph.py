"""The layer DAG of an ONNX model: compute nodes and the activation tensors between them.

Weights never cross a cut: a node whose inputs are all initializers, constants or
outputs of other such nodes (``Constant``, ``Unsqueeze`` of a weight, ...) is *folded*:
it is left out of the DAG and travels with whichever side needs it (the split copies it
into the head, the tail or both). Only tensors computed from the model inputs are
activations, and only activations can cross a cut.

A cut is a set ``S`` of compute nodes that run on the device, closed under
predecessors (every producer of an input of a node in ``S`` is in ``S``); the tensors
that cross it are the activations produced on the device side (model inputs included)
and consumed by at least one node on the cloud side.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from devices.errors import ModelError, PartitionError


@dataclass(frozen=True)
class TensorInfo:
    """An activation tensor: shape with ``None`` for the batch (or another dynamic) dim."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    producer: str  # node name, or "" for a model input
    consumers: tuple[str, ...]
    is_input: bool = False
    is_output: bool = False

    def bytes(self, batch: int = 1) -> int:
        """Size in bytes at the given batch size (dynamic dims take ``batch``)."""
        n = 1
        for d in self.shape:
            n *= batch if d is None else d
        return int(n) * self.dtype.itemsize

    def wire_bytes(self, wire: str = "fp32", batch: int = 1) -> int:
        """Bytes on the link when crossing tensors travel as ``wire`` (see ``WIRE_FORMATS``):
        under ``fp16`` a float32 tensor is sent at half precision, anything else as it is."""
        if wire == "fp16" and self.dtype == np.float32:
            return self.bytes(batch) // 2
        return self.bytes(batch)


@dataclass(frozen=True)
class LayerNode:
    """A compute node: its activation inputs and outputs and its rough cost."""

    name: str
    op_type: str
    inputs: tuple[str, ...]  # activation tensors only
    outputs: tuple[str, ...]
    flops: float  # multiply-adds x2 at batch 1, approximate
    param_bytes: int  # bytes of the weights it reads (folded producers included)
    index: int  # position in the model's node list


@dataclass
class LayerGraph:
    """Compute nodes in a topological order and the activation tensors between them.

    Built by :meth:`from_model`; ``model`` is the model with every node named (unnamed
    nodes get ``<op>_<index>``), which is what :func:`partition.split_model` and the
    profiler refer to.
    """

    model: onnx.ModelProto
    nodes: dict[str, LayerNode]
    tensors: dict[str, TensorInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    order: tuple[str, ...]
    batch: int = 1
    folded: tuple[str, ...] = ()
    preds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    succs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------

    @staticmethod
    def from_model(model: onnx.ModelProto, batch: int = 1) -> LayerGraph:
        """Analyse ``model`` (a ModelProto); dynamic dims other than known ones are
        resolved by running shape inference, and the batch dim stays a parameter."""
        if not isinstance(model, onnx.ModelProto):
            raise ModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
        if batch < 1:
            raise PartitionError(f"batch must be >= 1, got {batch}")
        model = _named_copy(model)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # onnx raises several types for a broken graph
            raise ModelError(f"model '{model.graph.name}': shape inference failed: {exc}") from exc
        graph = inferred.graph
        inits = {t.name for t in graph.initializer}
        infos: dict[str, onnx.ValueInfoProto] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            infos[vi.name] = vi
        inputs = tuple(i.name for i in graph.input if i.name not in inits)
        outputs = tuple(o.name for o in graph.output)
        if not inputs:
            raise ModelError(f"model '{graph.name}': no data inputs")

        weight: set[str] = set(inits) | {""}
        folded: list[str] = []
        compute: list[onnx.NodeProto] = []
        for node in graph.node:
            if all(i in weight for i in node.input):
                weight.update(node.output)
                folded.append(node.name)
            else:
                compute.append(node)
        # Constant-only subgraphs feeding a node add to its weight bytes.
        const_bytes = {t.name: _tensor_bytes(t) for t in graph.initializer}
        init_dims = {t.name: tuple(t.dims) for t in graph.initializer}
        # Outputs of folded producers (Constant, Unsqueeze of a weight, ...): sizes from
        # shape inference.
        for w in weight - set(inits) - {""}:
            shp = _shapes(infos, {w}).get(w)
            if shp is not None and all(d is not None for d in shp[0]):
                dims = tuple(int(d) for d in shp[0])  # type: ignore[arg-type]
                init_dims.setdefault(w, dims)
                const_bytes.setdefault(w, int(np.prod(dims, dtype=np.int64)) * shp[1].itemsize)
        for node in graph.node:
            if node.name in folded and node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        const_bytes[node.output[0]] = _tensor_bytes(a.t)

        # Keep only nodes that lead to an output: dead ends never run in a split.
        producer_of = {o: n for n in compute for o in n.output}
        live: set[str] = set()
        stack = [o for o in outputs if o in producer_of]
        missing = [o for o in outputs if o not in producer_of and o not in inputs]
        if missing:
            raise ModelError(
                f"model '{graph.name}': output(s) {missing} are not computed from the inputs"
            )
        while stack:
            t = stack.pop()
            n = producer_of.get(t)
            if n is None or n.name in live:
                continue
            live.add(n.name)
            stack.extend(i for i in n.input if i not in weight)
        compute = [n for n in compute if n.name in live]

        shapes = _shapes(infos, {i for n in compute for i in list(n.input) + list(n.output)} - weight)
        unknown = [t for t, s in shapes.items() if s is None]
        if unknown:
            shapes.update(_shapes_by_running(model, unknown, inputs, infos))

        consumers: dict[str, list[str]] = {}
        for n in compute:
            for i in dict.fromkeys(n.input):
                if i not in weight:
                    consumers.setdefault(i, []).append(n.name)
        tensors: dict[str, TensorInfo] = {}
        for name in inputs:
            tensors[name] = TensorInfo(
                name, shapes[name][1], shapes[name][0], "", tuple(consumers.get(name, ())),
                is_input=True, is_output=name in outputs,
            )
        nodes: dict[str, LayerNode] = {}
        for idx, n in enumerate(compute):
            acts_in = tuple(i for i in dict.fromkeys(n.input) if i not in weight)
            acts_out = tuple(o for o in n.output if o)
            for o in acts_out:
                shape, dtype = shapes[o]
                tensors[o] = TensorInfo(
                    o, dtype, shape, n.name, tuple(consumers.get(o, ())), is_output=o in outputs
                )
            pbytes = sum(const_bytes.get(i, 0) for i in n.input if i in weight)
            nodes[n.name] = LayerNode(
                n.name, n.op_type, acts_in, acts_out,
                _flops(n, shapes, init_dims), pbytes, idx,
            )
        preds: dict[str, tuple[str, ...]] = {}
        succs: dict[str, list[str]] = {n: [] for n in nodes}
        for n in nodes.values():
            ps = tuple(dict.fromkeys(tensors[i].producer for i in n.inputs if tensors[i].producer))
            preds[n.name] = ps
            for p in ps:
                succs[p].append(n.name)
        order = _topological(nodes, preds)
        return LayerGraph(
            model=model, nodes=nodes, tensors=tensors, inputs=inputs, outputs=outputs,
            order=order, batch=batch, folded=tuple(folded), preds=preds,
            succs={k: tuple(v) for k, v in succs.items()},
        )

    @staticmethod
    def from_path(path: str | Path, batch: int = 1) -> LayerGraph:
        """Load an ONNX file and analyse it (a thin wrapper over :meth:`from_model`)."""
        return LayerGraph.from_model(load_model(path), batch=batch)

    # -- cuts ---------------------------------------------------------------------------

    def crossing(self, device_nodes: Iterable[str]) -> tuple[str, ...]:
        """Tensors that cross from the device set ``device_nodes`` to the cloud side."""
        s = set(device_nodes)
        out: list[str] = []
        for name in self.inputs:
            if any(c not in s for c in self.tensors[name].consumers):
                out.append(name)
        for n in self.order:
            if n not in s:
                continue
            for t in self.nodes[n].outputs:
                if any(c not in s for c in self.tensors[t].consumers):
                    out.append(t)
        return tuple(out)

    def cut_bytes(self, tensors: Iterable[str], batch: int | None = None, wire: str = "fp32") -> int:
        """Bytes of a set of tensors at ``batch`` (default: the graph's batch), as sent
        in the ``wire`` format."""
        b = self.batch if batch is None else batch
        return sum(self.tensors[t].wire_bytes(wire, b) for t in tensors)

    def output_bytes(self, batch: int | None = None) -> int:
        return self.cut_bytes(self.outputs, batch)

    def input_bytes(self, batch: int | None = None) -> int:
        return self.cut_bytes(self.inputs, batch)

    def is_valid_cut(self, device_nodes: Iterable[str]) -> bool:
        """True when ``device_nodes`` is closed under predecessors."""
        s = set(device_nodes)
        return all(p in s for n in s for p in self.preds[n])

    def device_side(self, cut_tensors: Sequence[str]) -> frozenset[str]:
        """The device node set of the cut given by its crossing tensors: every node
        that the cut tensors depend on (ancestors, including their producers)."""
        for t in cut_tensors:
            if t not in self.tensors:
                raise PartitionError(
                    f"cut tensor '{t}' is not an activation of model '{self.model.graph.name}'"
                )
        seen: set[str] = set()
        stack = [self.tensors[t].producer for t in cut_tensors if self.tensors[t].producer]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(self.preds[n])
        return frozenset(seen)

    def frontiers(self, order: Sequence[str] | None = None) -> Iterator[tuple[int, tuple[str, ...]]]:
        """``(k, tensors)`` for the frontier after each prefix of a topological order
        (``k`` nodes on the device, 1 <= k < n), skipping cuts that would leave a model
        output on the device side."""
        order = tuple(order) if order is not None else self.small_frontier_order()
        s: set[str] = set()
        live: dict[str, int] = {}  # tensor -> consumers still on the cloud side
        for name in self.inputs:
            live[name] = len(self.tensors[name].consumers)
        outputs_on_device = 0
        for k, n in enumerate(order[:-1], start=1):
            s.add(n)
            node = self.nodes[n]
            for i in node.inputs:
                live[i] -= 1
            for o in node.outputs:
                live[o] = len(self.tensors[o].consumers)
                if self.tensors[o].is_output:
                    outputs_on_device += 1
            if outputs_on_device:
                continue
            yield k, tuple(t for t, c in live.items() if c > 0)

    def small_frontier_order(self) -> tuple[str, ...]:
        """A topological order that keeps the crossing bytes small: among the ready
        nodes, run the one that shrinks (or least grows) the frontier, so a branch is
        finished before the next one starts."""
        remaining = {n: len(self.preds[n]) for n in self.nodes}
        pending_consumers = {t: len(info.consumers) for t, info in self.tensors.items()}
        ready = [n for n, c in remaining.items() if c == 0]
        out: list[str] = []
        index = {n: self.nodes[n].index for n in self.nodes}
        while ready:
            best, best_key = None, None
            for n in ready:
                node = self.nodes[n]
                grow = sum(self.tensors[o].bytes(1) for o in node.outputs if self.tensors[o].consumers)
                shrink = sum(
                    self.tensors[i].bytes(1) for i in node.inputs if pending_consumers[i] == 1
                )
                key = (grow - shrink, index[n])
                if best_key is None or key < best_key:
                    best, best_key = n, key
            assert best is not None
            ready.remove(best)
            out.append(best)
            for i in self.nodes[best].inputs:
                pending_consumers[i] -= 1
            for sn in self.succs[best]:
                remaining[sn] -= 1
                if remaining[sn] == 0:
                    ready.append(sn)
        return tuple(out)

    def ideals(self, limit: int = 200_000) -> list[frozenset[str]] | None:
        """Every valid device set (predecessor-closed, no model output on the device)
        other than the empty and the full set, or ``None`` when there are more than
        ``limit`` (enumeration would be exponential; use the min-cut instead)."""
        order = self.order
        pos = {n: i for i, n in enumerate(order)}
        output_nodes = {self.tensors[o].producer for o in self.outputs if self.tensors[o].producer}
        result: list[frozenset[str]] = []
        # Depth-first over nodes in topological order: a node may join only if all of
        # its predecessors have; excluded nodes forbid their successors.
        n = len(order)
        chosen: list[bool] = [False] * n
        pred_idx = [[pos[p] for p in self.preds[v]] for v in order]
        count = 0

        def rec(i: int) -> bool:
            nonlocal count
            if i == n:
                count += 1
                if count > limit:
                    return False
                result.append(frozenset(order[j] for j in range(n) if chosen[j]))
                return True
            v = order[i]
            can = v not in output_nodes and all(chosen[j] for j in pred_idx[i])
            if can:
                chosen[i] = True
                if not rec(i + 1):
                    return False
                chosen[i] = False
            return rec(i + 1)

        import sys

        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, n + 1000))
        try:
            ok = rec(0)
        finally:
            sys.setrecursionlimit(old)
        if not ok:
            return None
        return [s for s in result if s]


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file with a clear error for a missing or malformed one."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model '{p}': file not found")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"model '{p}': not a readable ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelError(f"model '{p}': not a readable ONNX model (no graph nodes)")
    return model


def _named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    ensure_node_names(copy)
    return copy


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed (or duplicate-named) node a stable name ``<op>_<index>``."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
            while n.name in seen:
                n.name += "_"
        seen.add(n.name)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        itemsize = 4
    return int(n) * itemsize


def _shapes(
    infos: dict[str, onnx.ValueInfoProto], names: set[str]
) -> dict[str, tuple[tuple[int | None, ...], np.dtype] | None]:
    out: dict[str, tuple[tuple[int | None, ...], np.dtype] | None] = {}
    for name in names:
        vi = infos.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            out[name] = None
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or tt.elem_type == 0:
            out[name] = None
            continue
        dims: list[int | None] = []
        ok = True
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(None)  # the batch dim: a parameter
            else:
                ok = False
        out[name] = (tuple(dims), helper.tensor_dtype_to_np_dtype(tt.elem_type)) if ok else None
    return out


def _shapes_by_running(
    model: onnx.ModelProto,
    names: list[str],
    inputs: Sequence[str],
    infos: dict[str, onnx.ValueInfoProto],
) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
    """Shapes that inference could not find, from one batch-1 run with zeros. Dims
    that change between batch 1 and batch 2 are the batch dim."""
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for n in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"model '{model.graph.name}': cannot determine tensor shapes: {exc}") from exc
    results = []
    for b in (1, 2):
        feeds = {}
        for i in sess.get_inputs():
            shape = [b if not isinstance(d, int) else d for d in i.shape]
            dtype = _ort_dtype(i.type)
            feeds[i.name] = np.zeros(shape, dtype=dtype)
        results.append(sess.run(names, feeds))
    out = {}
    for n, a1, a2 in zip(names, results[0], results[1]):
        dims = tuple(None if d1 != d2 else d1 for d1, d2 in zip(a1.shape, a2.shape))
        out[n] = (dims, a1.dtype)
    return out


def _ort_dtype(type_str: str) -> np.dtype:
    table = {
        "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
        "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
    }
    if type_str not in table:
        raise ModelError(f"input type {type_str} is not supported by the partitioner")
    return np.dtype(table[type_str])


def _flops(node: onnx.NodeProto, shapes: dict, init_dims: dict[str, tuple[int, ...]]) -> float:
    """Approximate FLOPs at batch 1 (2 per multiply-add), from output shapes and weights."""
    def numel(t: str) -> int:
        s = shapes.get(t)
        if not s:
            return 0
        n = 1
        for d in s[0]:
            n *= 1 if d is None else d
        return n

    out_n = sum(numel(o) for o in node.output if o)
    in_n = sum(numel(i) for i in node.input if i in shapes)
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        w = init_dims.get(node.input[1])
        if w:
            k = 1
            for d in w[1:]:
                k *= d
            return 2.0 * out_n * k
    if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
        w = init_dims.get(node.input[1])
        if w and len(w) >= 2:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            k = w[-1] if attrs.get("transB", 0) else w[-2]
            return 2.0 * out_n * k
    if node.op_type in ("MaxPool", "AveragePool"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k = 1
        for d in attrs.get("kernel_shape", [1]):
            k *= d
        return float(out_n * k)
    return float(max(out_n, in_n))


def _topological(nodes: dict[str, LayerNode], preds: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Kahn's algorithm, stable in the model's node order."""
    import heapq

    indeg = {n: len(preds[n]) for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for n, ps in preds.items():
        for p in ps:
            succ[p].append(n)
    heap = [(nodes[n].index, n) for n, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    out: list[str] = []
    while heap:
        _, n = heapq.heappop(heap)
        out.append(n)
        for s in succ[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (nodes[s].index, s))
    if len(out) != len(nodes):
        raise ModelError("model graph has a cycle")
    return tuple(out)
