"""ONNX files that every supported ONNX Runtime reads.

The device side supports ONNX Runtime 1.16 and later (JetPack 5's wheels); 1.16 reads
models up to IR version 9 and the default-domain opset 19 (ONNX 1.14's). The ``onnx``
package stamps new models with its own, newer IR version whatever operators they use, so
a file written as-is loads on a current runtime and is refused by an old one. Everything
edgecut writes goes through :func:`portable_model` (via :func:`save_model`).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from devices.errors import ModelError

__all__ = ["MAX_IR_VERSION", "MAX_OPSETS", "portable_model", "save_model"]

#: The newest IR version ONNX Runtime 1.16 reads (ONNX 1.14).
MAX_IR_VERSION = 9
#: The newest opset per domain ONNX Runtime 1.16 implements ("" is ai.onnx).
MAX_OPSETS = {"": 19, "ai.onnx": 19, "ai.onnx.ml": 3}


def portable_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` stamped with an IR version ONNX Runtime 1.16 reads (a copy when changed).

    The IR version becomes the lower of the model's and :data:`MAX_IR_VERSION`, and never
    below what its opsets need. An opset newer than the oldest runtime implements is an
    error naming the domain (converting operators down is the caller's decision).
    """
    used = _domains_used(model)
    unused_too_new = []
    for opset in model.opset_import:
        newest = MAX_OPSETS.get(opset.domain)
        if newest is None or opset.version <= newest:
            continue
        if opset.domain not in used and not (opset.domain == "ai.onnx" and "" in used):
            # Imported but no node uses it (ONNX Runtime's quantizer imports ai.onnx.ml at
            # the onnx package's newest version): dropping it changes nothing.
            unused_too_new.append(opset.domain)
            continue
        domain = opset.domain or "ai.onnx"
        raise ModelError(
            f"model '{model.graph.name}': opset {opset.version} of domain '{domain}' is "
            f"newer than ONNX Runtime 1.16 reads (at most {newest}); convert it with "
            "onnx.version_converter first"
        )
    opsets = [o for o in model.opset_import if o.domain not in unused_too_new]
    needed = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    target = max(min(model.ir_version, MAX_IR_VERSION), needed)
    if target == model.ir_version and not unused_too_new:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = target
    if unused_too_new:
        del out.opset_import[:]
        out.opset_import.extend(opsets)
    return out


def _domains_used(model: onnx.ModelProto) -> set[str]:
    """The operator domains the model's nodes use, subgraphs and functions included."""
    used: set[str] = set()
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            nodes.extend(graphs.pop().node)
            continue
        node = nodes.pop()
        used.add(node.domain)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                graphs.append(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                graphs.extend(attr.graphs)
    return used


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` (made portable, see :func:`portable_model`), creating the folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(portable_model(model), str(p))
    return p
