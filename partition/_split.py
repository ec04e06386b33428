"""Cut a model into a head (device) and a tail (cloud) along a set of tensors.

Like onnx's ``utils.Extractor``: the graph is indexed once (:class:`Splitter`), then
each split is a pure ModelProto -> (ModelProto, ModelProto) step; only the file writer
touches the disk. Weight-only producers (``Constant`` and friends) are copied into every
side that uses them, so no weight ever crosses a cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

from devices.errors import PartitionError
from partition._onnx import _named_copy, outer_names


class Splitter:
    """An index over one model for cheap repeated splits."""

    def __init__(self, model: onnx.ModelProto) -> None:
        if not isinstance(model, onnx.ModelProto):
            raise PartitionError(f"expected an onnx.ModelProto, got {type(model).__name__}")
        model = _named_copy(model)
        self._inferred = False
        if not any(vi.name for vi in model.graph.value_info):
            try:
                model = onnx.shape_inference.infer_shapes(model)
            except Exception:  # noqa: BLE001 - the symbolic pass below gets another go
                pass
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.inputs = [i for i in g.input if i.name not in self.inits]
        self.input_names = {i.name for i in self.inputs}
        self.output_names = [o.name for o in g.output]
        self.producer: dict[str, int] = {}
        for idx, n in enumerate(g.node):
            for o in n.output:
                if o:
                    self.producer[o] = idx
        self.infos: dict[str, onnx.ValueInfoProto] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.infos[vi.name] = vi

    def _reach(self, targets: Sequence[str], stops: set[str]) -> tuple[list[int], set[str]]:
        """Node indices needed to compute ``targets`` from ``stops``, and the graph
        inputs that were reached (tensors with no producer that are not initializers)."""
        nodes: set[int] = set()
        reached_inputs: set[str] = set()
        stack = list(targets)
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in stops:
                continue
            if t in self.inits:
                continue
            idx = self.producer.get(t)
            if idx is None:
                if t in self.input_names:
                    reached_inputs.add(t)
                    continue
                raise PartitionError(f"tensor '{t}' has no producer in model '{self.model.graph.name}'")
            if idx in nodes:
                continue
            nodes.add(idx)
            node = self.model.graph.node[idx]
            stack.extend(node.input)
            # Subgraph attributes (If/Loop) may read outer-scope tensors.
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.extend(outer_names(a.g))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        stack.extend(outer_names(sg))
        return sorted(nodes), reached_inputs

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        vi = self.infos.get(name)
        if not _typed(vi) and not self._inferred:
            # Partial value_info in the file: infer once (symbolically, probing what
            # inference cannot reach), then look again.
            self._inferred = True
            from partition._shapes import infer_symbolic

            wanted = sorted(set(self.producer) | self.input_names)
            table = infer_symbolic(self.model, wanted)
            for v in list(table.model.graph.value_info) + list(table.model.graph.output):
                if not _typed(self.infos.get(v.name)):
                    self.infos[v.name] = v
            vi = self.infos.get(name)
        if not _typed(vi):
            raise PartitionError(
                f"tensor '{name}': no type or shape information, and shape inference found none"
            )
        out = onnx.ValueInfoProto()
        out.CopyFrom(vi)
        return out

    def _build(
        self, name: str, node_idx: list[int], inputs: Sequence[str], outputs: Sequence[str]
    ) -> onnx.ModelProto:
        g = self.model.graph
        nodes = [g.node[i] for i in node_idx]
        used = {i for n in nodes for i in n.input}
        for n in nodes:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    used.update(outer_names(a.g))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        used.update(outer_names(sg))
        inits = [self.inits[t] for t in sorted(used) if t in self.inits]
        produced = {o for n in nodes for o in n.output}
        keep_vi = [
            vi for vi in g.value_info
            if vi.name in produced and vi.name not in set(outputs)
        ]
        graph = helper.make_graph(
            nodes,
            name,
            [self._value_info(i) for i in inputs],
            [self._value_info(o) for o in outputs],
            initializer=inits,
            value_info=keep_vi,
        )
        model = helper.make_model(
            graph,
            opset_imports=list(self.model.opset_import),
            producer_name="edgecut.partition",
        )
        model.ir_version = self.model.ir_version
        for f in self.model.functions:
            model.functions.append(f)
        return model

    def split(self, cut_tensors: Sequence[str]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
        """Head (model inputs -> cut tensors) and tail (cut tensors plus any model inputs
        it still needs -> model outputs)."""
        cut = list(dict.fromkeys(cut_tensors))
        if not cut:
            raise PartitionError("a split needs at least one cut tensor")
        for t in cut:
            if t in self.inits:
                raise PartitionError(f"cut tensor '{t}' is a weight; a cut carries activations only")
            if t not in self.producer and t not in self.input_names:
                raise PartitionError(
                    f"cut tensor '{t}' is not a tensor of model '{self.model.graph.name}'"
                )
        for t in cut:
            if t in self.output_names:
                raise PartitionError(f"cut tensor '{t}' is a model output; cut before it")
        head_nodes, head_inputs = self._reach(cut, set())
        tail_nodes, tail_inputs = self._reach(self.output_names, set(cut))
        if not tail_nodes:
            raise PartitionError(
                f"cut {cut}: nothing left for the cloud side (the cut is at the outputs)"
            )
        both = set(head_nodes) & set(tail_nodes)
        # Weight-only nodes may run on both sides; real compute on both means the cut
        # does not separate the graph.
        both_compute = sorted(i for i in both if not self._is_const_node(i))
        if both_compute:
            n = self.model.graph.node[both_compute[0]]
            raise PartitionError(
                f"cut {cut} does not separate the inputs from the outputs: node '{n.name}' "
                f"({n.op_type}) would run on both sides; add its outputs to the cut"
            )
        model_inputs = [i.name for i in self.inputs]
        head_in = [i for i in model_inputs if i in head_inputs or i in cut]
        if not head_in:
            # A cut made only of model inputs: the head just passes them on.
            head_in = [i for i in model_inputs if i in cut]
        tail_in = cut + [i for i in model_inputs if i in tail_inputs and i not in cut]
        base = self.model.graph.name or "model"
        head = self._build(f"{base}_head", head_nodes, head_in, cut)
        tail = self._build(f"{base}_tail", tail_nodes, tail_in, self.output_names)
        return head, tail

    @property
    def _const_tensors(self) -> set[str]:
        cached = getattr(self, "_const_cache", None)
        if cached is None:
            cached = set(self.inits)
            for n in self.model.graph.node:
                if all((not i) or i in cached for i in n.input):
                    cached.update(o for o in n.output if o)
            self._const_cache = cached
        return cached

    def _is_const_node(self, idx: int) -> bool:
        n = self.model.graph.node[idx]
        return all((not i) or i in self._const_tensors for i in n.input)



def _typed(vi: onnx.ValueInfoProto | None) -> bool:
    """A value info with an element type and a shape whose every dim is known (a value
    or a name; a negative value is not a size)."""
    if vi is None or not vi.type.HasField("tensor_type"):
        return False
    tt = vi.type.tensor_type
    if tt.elem_type == 0 or not tt.HasField("shape"):
        return False
    return all((d.HasField("dim_value") and d.dim_value >= 0) or (d.HasField("dim_param") and d.dim_param)
               for d in tt.shape.dim)


def split_model(
    model: onnx.ModelProto, cut_tensors: Sequence[str]
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Split ``model`` at ``cut_tensors`` into (head, tail) ModelProtos.

    The head maps the model inputs to the cut tensors; the tail maps the cut tensors
    (plus any model input it still reads) to the model outputs. Both keep the dynamic
    batch dim and pass ``onnx.checker``. For many splits of one model, build a
    :class:`Splitter` once and call :meth:`Splitter.split`.
    """
    return Splitter(model).split(cut_tensors)


def half_precision_inputs(model: onnx.ModelProto, names: Sequence[str]
                          ) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """A copy of ``model`` whose float32 graph inputs among ``names`` are declared float16
    and cast back to float32 inside, and the names it changed.

    This is how a tail takes crossing tensors sent at half precision (``wire = "fp16"``):
    the inputs keep their names, so a client sends the same tensors, cast; Triton and
    ``edgecut serve`` see an ordinary FP16 input. An input that is also a graph output is
    left alone (it would come back at half precision).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    outputs = {o.name for o in g.output}
    init_names = {t.name for t in g.initializer}
    changed = []
    for inp in g.input:
        if (inp.name in names and inp.name not in outputs and inp.name not in init_names
                and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT):
            changed.append(inp.name)
    renamed = {n: f"{n}__fp32" for n in changed}
    taken = {v.name for v in g.value_info} | {o for n in g.node for o in n.output}
    for new in renamed.values():
        if new in taken:
            raise PartitionError(f"model already has a tensor named '{new}'")

    def rename(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    rename(attr.g)
                for sub in attr.graphs:
                    rename(sub)

    rename(g)
    casts = [helper.make_node("Cast", [n], [renamed[n]], to=onnx.TensorProto.FLOAT,
                              name=f"wire_cast_{n}") for n in changed]
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    for inp in g.input:
        if inp.name in renamed:
            inp.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    if changed:
        onnx.checker.check_model(out)
    return out, tuple(changed)
