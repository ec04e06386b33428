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

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from devices.errors import ModelError, PartitionError
from partition._expr import Dim, evaluate, numel, product
from partition._onnx import (
    _named_copy,
    _reads,
    _tensor_bytes,
    load_model,
)
from partition._shapes import infer_symbolic, reference_sizes


@dataclass(frozen=True)
class TensorInfo:
    """An activation tensor.

    ``dims`` is its shape as a function of the model's dynamic input dims: each an ``int``
    or an expression over the symbols (``"N"``, ``"floor(H/4)"``; see
    :mod:`partition._expr`). ``shape`` is the same with ``None`` for every symbolic dim.
    ``sizes`` holds the reference size of every symbol (the graph's planning sizes) and
    ``batch_symbols`` those that the ``batch`` argument sets.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    producer: str  # node name, or "" for a model input
    consumers: tuple[str, ...]
    is_input: bool = False
    is_output: bool = False
    dims: tuple[Dim, ...] = ()
    sizes: tuple[tuple[str, int], ...] = ()
    batch_symbols: tuple[str, ...] = ()

    def env(self, batch: int = 1, sizes: Mapping[str, int] | None = None) -> dict[str, int]:
        """Symbol sizes: the reference ones, the batch symbols at ``batch``, then ``sizes``."""
        env = dict(self.sizes)
        env.update({b: batch for b in self.batch_symbols})
        if sizes:
            env.update(sizes)
        return env

    def numel(self, batch: int = 1, sizes: Mapping[str, int] | None = None) -> int:
        if not self.dims:  # built by hand without symbolic dims: dynamic dims are the batch
            n = 1
            for d in self.shape:
                n *= batch if d is None else d
            return int(n)
        return numel(self.dims, self.env(batch, sizes))

    def bytes(self, batch: int = 1, sizes: Mapping[str, int] | None = None) -> int:
        """Size in bytes at ``batch`` and the symbol ``sizes`` (the reference sizes for
        symbols not given). Never negative: a dim that evaluates below zero is an error."""
        return self.numel(batch, sizes) * self.dtype.itemsize

    def wire_bytes(self, wire: str = "fp32", batch: int = 1,
                   sizes: Mapping[str, int] | None = None) -> int:
        """Bytes on the link when crossing tensors travel as ``wire`` (see ``WIRE_FORMATS``):
        under ``fp16`` a float32 tensor is sent at half precision, anything else as it is."""
        if wire == "fp16" and self.dtype == np.float32:
            return self.bytes(batch, sizes) // 2
        return self.bytes(batch, sizes)

    def bytes_expr(self, wire: str = "fp32") -> str:
        """The byte count as one expression over the symbols (for the device's policy)."""
        item = self.dtype.itemsize
        if wire == "fp16" and self.dtype == np.float32:
            item = 2
        dims = self.dims or tuple(d if d is not None else (self.batch_symbols or ("N",))[0]
                                  for d in self.shape)
        return f"{item}*{product(dims)}"


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
    # The dynamic input dims: every symbol, those that are the batch, the reference size
    # of the others (what ``bytes(1)`` and the planner use), and how shapes were found.
    symbols: tuple[str, ...] = ()
    batch_symbols: tuple[str, ...] = ()
    sizes: dict[str, int] = field(default_factory=dict)
    assumed_sizes: tuple[str, ...] = ()
    shape_method: str = ""
    probed: tuple[str, ...] = ()
    approximate: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)
    init_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------

    @staticmethod
    def from_model(model: onnx.ModelProto, batch: int = 1,
                   sizes: Mapping[str, int] | None = None) -> LayerGraph:
        """Analyse ``model`` (a ModelProto). Every tensor's shape is found as a function
        of the model's dynamic input dims (see :mod:`partition._shapes`); ``sizes`` gives
        the reference size of each symbol (by its name in the file or as renamed), the
        batch symbols take ``batch``, and a symbol given no size takes
        ``partition._shapes.DEFAULT_SIZE`` (listed in ``assumed_sizes``)."""
        return _analyse(model, batch, sizes)

    @staticmethod
    def from_path(path: str | Path, batch: int = 1,
                  sizes: Mapping[str, int] | None = None) -> LayerGraph:
        """Load an ONNX file and analyse it (a thin wrapper over :meth:`from_model`)."""
        return LayerGraph.from_model(load_model(path), batch=batch, sizes=sizes)

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

    def cut_bytes(self, tensors: Iterable[str], batch: int | None = None, wire: str = "fp32",
                  sizes: Mapping[str, int] | None = None) -> int:
        """Bytes of a set of tensors at ``batch`` (default: the graph's batch) and the
        symbol ``sizes`` (default: the reference sizes), as sent in the ``wire`` format."""
        b = self.batch if batch is None else batch
        return sum(self.tensors[t].wire_bytes(wire, b, sizes) for t in tensors)

    def cut_bytes_expr(self, tensors: Iterable[str], wire: str = "fp32") -> str:
        """The bytes of a set of tensors as one expression over the symbols."""
        parts = [self.tensors[t].bytes_expr(wire) for t in tensors]
        return " + ".join(parts) if parts else "0"

    def output_bytes(self, batch: int | None = None, sizes: Mapping[str, int] | None = None) -> int:
        return self.cut_bytes(self.outputs, batch, sizes=sizes)

    def input_bytes(self, batch: int | None = None, sizes: Mapping[str, int] | None = None) -> int:
        return self.cut_bytes(self.inputs, batch, sizes=sizes)

    def env(self, sizes: Mapping[str, int] | None = None, batch: int | None = None) -> dict[str, int]:
        """Every symbol's size: the reference sizes, batch symbols at ``batch``, then
        ``sizes`` (by symbol, or by the file's own dim name)."""
        env = dict(self.sizes)
        env.update({b: self.batch if batch is None else batch for b in self.batch_symbols})
        for k, v in (sizes or {}).items():
            env[self.renamed.get(k, k)] = int(v)
        return env

    def sizes_of(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """The symbol sizes that concrete input shapes (name -> shape) bind: what a
        request's arrays say about ``H``, ``W``, ``N``. A dim that contradicts the model's
        fixed one is an error naming the input."""
        out: dict[str, int] = {}
        for name in self.inputs:
            if name not in shapes:
                continue
            dims = self.tensors[name].dims
            got = tuple(int(x) for x in shapes[name])
            if dims and len(dims) != len(got):
                raise PartitionError(f"input '{name}': expected rank {len(dims)}, got shape {list(got)}")
            for d, v in zip(dims, got):  # noqa: B905 (Python 3.8)
                if isinstance(d, int):
                    if d != v:
                        raise PartitionError(f"input '{name}': expected dim {d}, got shape {list(got)}")
                elif d.isidentifier():
                    out[d] = v
        return out

    def node_flops(self, name: str, sizes: Mapping[str, int] | None = None) -> float:
        """A node's approximate FLOPs at the symbol ``sizes`` (reference sizes otherwise)."""
        proto = self._protos().get(name)
        if proto is None:
            return self.nodes[name].flops
        return _flops(proto, self.tensors, self.init_dims, self.env(sizes, 1))

    def _protos(self) -> dict[str, onnx.NodeProto]:
        cached = self.__dict__.get("_proto_cache")
        if cached is None:
            cached = {n.name: n for n in self.model.graph.node if n.name in self.nodes}
            self.__dict__["_proto_cache"] = cached
        return cached

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


def _analyse(model: onnx.ModelProto, batch: int,
             sizes: Mapping[str, int] | None) -> LayerGraph:
    """The work of :meth:`LayerGraph.from_model`: fold the weights, keep the nodes that
    lead to an output, find every activation's symbolic shape, and index the DAG."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    if batch < 1:
        raise PartitionError(f"batch must be >= 1, got {batch}")
    model = _named_copy(model)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = tuple(i.name for i in graph.input if i.name not in inits)
    outputs = tuple(o.name for o in graph.output)
    if not inputs:
        raise ModelError(f"model '{graph.name}': no data inputs")
    reads = {n.name: _reads(n) for n in graph.node}

    weight: set[str] = set(inits) | {""}
    folded: list[str] = []
    compute: list[onnx.NodeProto] = []
    for node in graph.node:
        if all(i in weight for i in reads[node.name]):
            weight.update(node.output)
            folded.append(node.name)
        else:
            compute.append(node)

    # Keep only nodes that lead to an output: dead ends never run in a split. A
    # subgraph's reads from the outer scope count as inputs of its node.
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
        stack.extend(i for i in reads[n.name] if i not in weight)
    compute = [n for n in compute if n.name in live]

    acts = ({i for n in compute for i in reads[n.name]} | {o for n in compute for o in n.output}
            | set(inputs)) - weight
    table = infer_symbolic(model, sorted(acts), sizes)
    weight_shapes = {w: (tuple(int(d) for d in table.shapes[w][0]), table.shapes[w][1])
                     for w in weight - set(inits) - {""}
                     if w in table.shapes and all(isinstance(d, int) for d in table.shapes[w][0])}
    env = reference_sizes(table.symbols, table.batch_symbols, sizes, table.renamed, batch)
    ref = tuple(sorted((k, v) for k, v in env.items() if k not in table.batch_symbols))
    assumed = tuple(s for s in table.symbols if s not in table.batch_symbols
                    and s not in (sizes or {}) and not any(
                        table.renamed.get(k) == s for k in (sizes or {})))
    env1 = dict(env)
    env1.update({b: 1 for b in table.batch_symbols})

    # Constant-only subgraphs feeding a node add to its weight bytes.
    const_bytes = {t.name: _tensor_bytes(t) for t in graph.initializer}
    init_dims = {t.name: tuple(t.dims) for t in graph.initializer}
    for w, (dims, dtype) in weight_shapes.items():
        init_dims.setdefault(w, dims)
        const_bytes.setdefault(w, int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize)
    for node in graph.node:
        if node.name in folded and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    const_bytes[node.output[0]] = _tensor_bytes(a.t)

    consumers: dict[str, list[str]] = {}
    for n in compute:
        for i in dict.fromkeys(reads[n.name]):
            if i not in weight:
                consumers.setdefault(i, []).append(n.name)

    def info(name: str, producer: str, is_input: bool = False) -> TensorInfo:
        dims, dtype = table.shapes[name]
        shape = tuple(d if isinstance(d, int) else None for d in dims)
        return TensorInfo(name, np.dtype(dtype), shape, producer, tuple(consumers.get(name, ())),
                          is_input=is_input, is_output=name in outputs, dims=tuple(dims),
                          sizes=ref, batch_symbols=table.batch_symbols)

    tensors: dict[str, TensorInfo] = {}
    for name in inputs:
        tensors[name] = info(name, "", is_input=True)
    nodes: dict[str, LayerNode] = {}
    for idx, n in enumerate(compute):
        acts_in = tuple(i for i in dict.fromkeys(reads[n.name]) if i not in weight)
        acts_out = tuple(o for o in n.output if o)
        for o in acts_out:
            tensors[o] = info(o, n.name)
        pbytes = sum(const_bytes.get(i, 0) for i in n.input if i in weight)
        nodes[n.name] = LayerNode(
            n.name, n.op_type, acts_in, acts_out,
            _flops(n, tensors, init_dims, env1), pbytes, idx,
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
        model=table.model, nodes=nodes, tensors=tensors, inputs=inputs, outputs=outputs,
        order=order, batch=batch, folded=tuple(folded), preds=preds,
        succs={k: tuple(v) for k, v in succs.items()},
        symbols=table.symbols, batch_symbols=table.batch_symbols, sizes=dict(ref),
        assumed_sizes=assumed, shape_method=table.method, probed=table.probed,
        approximate=table.approximate, renamed=dict(table.renamed),
        init_dims=init_dims,
    )


def _flops(node: onnx.NodeProto, tensors: Mapping[str, TensorInfo],
           init_dims: dict[str, tuple[int, ...]], env: Mapping[str, int]) -> float:
    """Approximate FLOPs (2 per multiply-add) at the symbol sizes ``env``, from output
    shapes and weights."""
    def count(t: str) -> int:
        info = tensors.get(t)
        if info is None:
            return 0
        try:
            return numel(info.dims, env) if info.dims else info.numel(1)
        except PartitionError:
            return 0

    out_n = sum(count(o) for o in node.output if o)
    in_n = sum(count(i) for i in node.input if i in tensors)
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        w = init_dims.get(node.input[1])
        if w:
            k = 1
            for d in w[1:]:
                k *= d
            return 2.0 * out_n * k
    if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
        w = init_dims.get(node.input[1])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if w and len(w) >= 2:
            k = w[-1] if attrs.get("transB", 0) else w[-2]
            return 2.0 * out_n * k
        b = tensors.get(node.input[1])
        if b is not None and len(b.dims or b.shape) >= 2:
            d = (b.dims or b.shape)[-1 if attrs.get("transB", 0) else -2]
            try:
                k = evaluate(d, env) if d is not None else 1
            except PartitionError:
                k = 1
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
