"""Every tensor's shape as a function of the model's dynamic input dims.

A model input ``[N, 3, H, W]`` makes ``N``, ``H`` and ``W`` *symbols*; every tensor's dim is
then an ``int`` or an expression over them (``floor(H/4)``; see :mod:`partition._expr`).
Dims that are unnamed, ``0`` or negative in the file (exporters write ``-1`` for "any") are
symbols too, named ``<input>_<axis>``; a ``-1`` is never a size.

How shapes are found, in order:

0. onnx's shape inference, when it leaves no needed dim unknown (models whose only dynamic
   dim is the batch).
1. ONNX Runtime's symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``,
   sympy underneath) on a copy with the file's intermediate shapes removed (they may hold
   ``-1`` or stale dims) and the input symbols renamed to identifiers.
2. onnx's own shape inference where the first fails.
3. For tensors still left with an unknown or foreign symbol (a data-dependent dim), the
   model is *run* at several sizes per symbol and each dim fitted as an affine function of
   one symbol (``floor(a*H/b + c)``) or of the batch times one; the graph records the
   tensors resolved this way in ``shape_method`` and those no fit explained (their size at
   the reference sizes is used, flagged ``approximate``).

The batch symbols are the symbolic first dims of the inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx
from onnx import helper

from devices.errors import ModelError
from partition._expr import Dim, evaluate, symbols_of

DEFAULT_SIZE = 224  # a dynamic dim nobody gave a size for (not the batch): stated in the plan


@dataclass(frozen=True)
class ShapeTable:
    """The result of :func:`infer_symbolic`."""

    model: onnx.ModelProto  # the model with every intermediate value_info filled in
    shapes: dict[str, tuple[tuple[Dim, ...], np.dtype]]
    symbols: tuple[str, ...]  # in the order they appear on the inputs
    batch_symbols: tuple[str, ...]
    renamed: dict[str, str]  # file's dim_param (or "<input>:<axis>") -> symbol
    method: str  # "onnxruntime-symbolic", "onnx", plus "+probed" when probing was needed
    probed: tuple[str, ...] = ()
    approximate: tuple[str, ...] = ()
    input_dims: dict[str, tuple[Dim, ...]] = field(default_factory=dict)


def _ident(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not out or out[0].isdigit():
        out = "d_" + out
    if out in ("floor", "ceil", "Max", "Min", "Mod", "Abs"):
        out += "_"
    return out


_GENERATED = re.compile(r"^(\?|unk__\d+|p2o\.DynamicDimension\.\d+|dim_?\d*|-1|None|batch_?\d*)$")
_POSITIONAL = {4: ("N", "C", "H", "W"), 3: ("N", "L", "D"), 2: ("N", "D"), 1: ("N",)}


def _meaningful(param: str) -> bool:
    """A dim name a person wrote (``height``), not one an exporter generated (``?``,
    ``unk__3``, ``p2o.DynamicDimension.1``)."""
    return bool(param) and not _GENERATED.match(param)


def _positional(name: str, axis: int, rank: int, k: int) -> str:
    # N, C, H, W for the first input; prefixed by the input's name for the others.
    base = _POSITIONAL.get(rank, ())
    sym = base[axis] if axis < len(base) else f"{_ident(name)}_{axis}"
    return sym if k == 0 or axis >= len(base) else f"{_ident(name)}_{sym}"


def _name_dims(g: onnx.GraphProto) -> tuple[list[tuple[onnx.ValueInfoProto, list[str | None]]],
                                            dict[str, str], list[str], list[str]]:
    """Per data input of ``g``, the symbol of each dynamic axis (None for a fixed one),
    the file's names -> symbols, the symbols in order and the batch symbols (a dynamic
    first axis). One rule for the graph and for :func:`input_dims`."""
    inits = {t.name for t in g.initializer}
    renamed: dict[str, str] = {}
    symbols: list[str] = []
    batch: list[str] = []
    named = []
    data_inputs = [i for i in g.input if i.name not in inits and i.type.HasField("tensor_type")
                   and i.type.tensor_type.HasField("shape")]
    for k, inp in enumerate(data_inputs):
        dims = inp.type.tensor_type.shape.dim
        per: list[str | None] = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                per.append(None)
                continue
            param = d.dim_param if d.HasField("dim_param") else ""
            key = param if _meaningful(param) else f"{inp.name}:{axis}"
            sym = renamed.get(key)
            if sym is None:
                sym = _ident(param) if _meaningful(param) else _positional(inp.name, axis, len(dims), k)
                while sym in symbols:
                    sym += "_"
                renamed[key] = sym
                if param:
                    renamed.setdefault(param, sym)
                symbols.append(sym)
            per.append(sym)
            if axis == 0 and sym not in batch:
                batch.append(sym)
        named.append((inp, per))
    return named, renamed, symbols, batch


def input_dims(model: onnx.ModelProto) -> tuple[dict[str, list[int | str]], list[str]]:
    """Each data input's dims as the layer graph names them (an int where fixed, the
    symbol where dynamic) and the batch symbols, read from the inputs alone (no
    inference): ``({"x": ["N", 3, "H", "W"]}, ["N"])``. A plan's ``inputs[x]["dims"]``
    carry the same names."""
    named, _, _, batch = _name_dims(model.graph)
    out: dict[str, list[int | str]] = {}
    for inp, per in named:
        dims = inp.type.tensor_type.shape.dim
        out[inp.name] = [int(d.dim_value) if s is None else s for d, s in zip(dims, per)]  # noqa: B905
    return out, batch


def _normalized(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str], list[str], list[str]]:
    """A copy with input dims as identifier symbols, no intermediate shapes and output
    shapes left to inference."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    named, renamed, symbols, batch = _name_dims(g)
    for inp, per in named:
        for d, sym in zip(inp.type.tensor_type.shape.dim, per):  # noqa: B905 (Python 3.8)
            if sym is not None:
                d.Clear()
                d.dim_param = sym
    del g.value_info[:]
    for out in g.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return m, renamed, symbols, batch


_LIGHT_ELEMENTS = 4096  # initializers above this size travel to inference without data


def _light(m: onnx.ModelProto) -> onnx.ModelProto:
    """``m`` without the data of its large initializers: shape inference needs only their
    shapes (and the values of small ones: shape constants), and serializing 100 MB of
    weights for it took seconds."""
    light = onnx.ModelProto()
    saved = list(m.graph.initializer)
    del m.graph.initializer[:]
    try:
        light.CopyFrom(m)
    finally:
        m.graph.initializer.extend(saved)
    for t in saved:
        n = 1
        for d in t.dims:
            n *= d
        if n <= _LIGHT_ELEMENTS:
            light.graph.initializer.append(t)
        else:
            stub = light.graph.initializer.add()
            stub.name = t.name
            stub.data_type = t.data_type
            stub.dims.extend(t.dims)
    return light


def _read(vi: onnx.ValueInfoProto) -> tuple[tuple[Dim, ...], np.dtype] | None:
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if tt.elem_type == 0 or not tt.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            return None
    return tuple(dims), helper.tensor_dtype_to_np_dtype(tt.elem_type)


def _known(dims: tuple[Dim, ...], symbols: set[str]) -> bool:
    for d in dims:
        if isinstance(d, str):
            try:
                if not symbols_of(d) <= symbols:
                    return False
            except Exception:
                return False
    return True


def _as_is(expr, *_args, **_kwargs):  # noqa: ANN001, ANN202 - stands in for sympy.simplify
    return expr


def _ort_symbolic(ssi, m: onnx.ModelProto) -> onnx.ModelProto | None:  # noqa: ANN001 - a module
    """ORT's symbolic inference, keeping what it found when it could not finish: its
    ``infer_shapes`` then writes ``sym_shape_infer_temp.onnx`` into the working folder and
    raises, losing the rest. Its steps are called directly (they are the same from 1.16
    on); the public call is the fallback."""
    try:
        engine = ssi.SymbolicShapeInference(2**31 - 1, True, False, 0)
        engine._preprocess(m)
        while engine.run_:
            engine._infer_impl()
        engine._update_output_from_vi()
        return engine.out_mp_
    except AttributeError:  # a version without those steps
        return ssi.SymbolicShapeInference.infer_shapes(m, int_max=2**31 - 1, auto_merge=True,
                                                       guess_output_rank=False, verbose=0)


def _run_inference(m: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    try:
        from onnxruntime.tools import symbolic_shape_infer as ssi

        # sympy's simplify on nested floors (a detector's Resize chain) takes minutes;
        # the expressions are only ever evaluated, so they are kept as built.
        saved = ssi.sympy.simplify
        ssi.sympy.simplify = _as_is
        try:
            out = _ort_symbolic(ssi, m)
        finally:
            ssi.sympy.simplify = saved
        if out is not None:
            return out, "onnxruntime-symbolic"
    except Exception:  # noqa: BLE001 - any failure: fall back to onnx's inference
        pass
    try:
        return onnx.shape_inference.infer_shapes(m), "onnx"
    except Exception as exc:  # onnx raises several types for a broken graph
        raise ModelError(f"model '{m.graph.name}': shape inference failed: {exc}") from exc


def infer_symbolic(model: onnx.ModelProto, names: Sequence[str],
                   sizes: Mapping[str, int] | None = None) -> ShapeTable:
    """Symbolic shapes of ``names`` (and of every tensor inference reaches).

    ``sizes`` maps symbols (or the file's own dim names) to representative sizes; probing
    uses them as its base point."""
    m, renamed, symbols, batch = _normalized(model)
    syms = set(symbols)
    # onnx's own inference first (fast, C++): enough where only the batch is dynamic;
    # ONNX Runtime's symbolic inference (sympy, seconds) when a dim it leaves unknown
    # depends on the input's size.
    inferred, method = None, ""
    light = _light(m)
    try:
        quick = onnx.shape_inference.infer_shapes(light)
        shapes = _collect(quick.graph, syms)
        if all(n in shapes for n in names):
            inferred, method = quick, "onnx"
    except Exception:  # noqa: BLE001 - the symbolic pass below reports a broken graph
        pass
    if inferred is None:
        inferred, method = _run_inference(light)
        shapes = _collect(inferred.graph, syms)
    g = inferred.graph
    input_dims = {i.name: shapes[i.name][0] for i in g.input if i.name in shapes}
    missing = [n for n in names if n not in shapes]
    probed: tuple[str, ...] = ()
    approximate: tuple[str, ...] = ()
    if missing:
        base = reference_sizes(symbols, batch, sizes, renamed)
        fitted, approximate = _probe(m, missing, symbols, batch, base)
        shapes.update(fitted)
        probed = tuple(missing)
        method += "+probed"
    # The annotated model keeps what inference found plus the probed shapes, so the
    # split halves and the Triton configs have a shape for every crossing tensor.
    # ``m`` is this function's own copy (with the weights): it takes inference's value
    # infos and outputs, rather than copying the weights once more.
    annotated = m
    del annotated.graph.output[:]
    annotated.graph.output.extend(g.output)
    annotated.graph.value_info.extend(g.value_info)
    outs = {o.name for o in annotated.graph.output}
    stale = [vi for vi in annotated.graph.value_info if vi.name in probed]
    for vi in stale:
        annotated.graph.value_info.remove(vi)
    for name in probed:
        if name in outs or name not in shapes:
            continue
        dims, dtype = shapes[name]
        annotated.graph.value_info.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(dims)))
    _fill_outputs(annotated, shapes)
    return ShapeTable(annotated, shapes, tuple(symbols), tuple(batch), renamed, method,
                      probed, approximate, input_dims)


def _collect(g: onnx.GraphProto, syms: set[str]) -> dict[str, tuple[tuple[Dim, ...], np.dtype]]:
    shapes: dict[str, tuple[tuple[Dim, ...], np.dtype]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        got = _read(vi)
        if got is not None and _known(got[0], syms):
            shapes[vi.name] = got
    return shapes


def _fill_outputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[tuple[Dim, ...], np.dtype]]) -> None:
    for out in model.graph.output:
        got = shapes.get(out.name)
        if got is None:
            continue
        tt = out.type.tensor_type
        tt.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(got[1]))
        tt.ClearField("shape")
        for d in got[0]:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d


def reference_sizes(symbols: Sequence[str], batch: Sequence[str], sizes: Mapping[str, int] | None,
                    renamed: Mapping[str, str] | None = None, batch_size: int = 1) -> dict[str, int]:
    """A size for every symbol: the given one (by symbol or by the file's dim name), the
    batch size for batch symbols, :data:`DEFAULT_SIZE` for the rest."""
    given: dict[str, int] = {}
    for k, v in (sizes or {}).items():
        given[str(k)] = int(v)
        if renamed and k in renamed:
            given[renamed[k]] = int(v)
    out = {}
    for s in symbols:
        if s in given:
            out[s] = given[s]
        elif s in batch:
            out[s] = batch_size
        else:
            out[s] = DEFAULT_SIZE
    return out


def _feeds(model: onnx.ModelProto, env: Mapping[str, int]) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    rng = np.random.default_rng(0)
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else env[d.dim_param] for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def observe(model: onnx.ModelProto, names: Sequence[str], envs: Sequence[Mapping[str, int]],
            skip_failures: bool = False) -> list[dict[str, tuple[tuple[int, ...], np.dtype]] | None]:
    """Run ``model`` (inputs named by symbol) at each size and return every named
    tensor's concrete shape."""
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
    opts.log_severity_level = 4  # a size the model rejects is expected while probing
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"model '{model.graph.name}': cannot determine tensor shapes: {exc}") from exc
    results = []
    for i, env in enumerate(envs):
        try:
            arrays = sess.run(list(names), _feeds(model, env))
        except Exception as exc:
            if i == 0 or not skip_failures:
                raise ModelError(
                    f"model '{model.graph.name}': probing shapes at {dict(env)} failed: {exc}"
                ) from exc
            results.append(None)  # the model does not take this size (a fixed height)
            continue
        results.append({n: (tuple(int(x) for x in a.shape), a.dtype) for n, a in zip(names, arrays)})  # noqa: B905 (Python 3.8)
    return results


def _affine(xs: Sequence[int], ys: Sequence[int]) -> tuple[Fraction, Fraction] | None:
    a = Fraction(ys[1] - ys[0], xs[1] - xs[0])
    b = ys[0] - a * xs[0]
    if all(a * x + b == y for x, y in zip(xs, ys)):  # noqa: B905 (Python 3.8)
        return a, b
    return None


def _expr(sym: str, a: Fraction, b: Fraction) -> Dim:
    if a == 0:
        return int(b)
    den = a.denominator * b.denominator // math.gcd(a.denominator, b.denominator)
    ka, kb = int(a * den), int(b * den)
    lin = (sym if ka == 1 else f"{ka}*{sym}") + (f" + {kb}" if kb > 0 else f" - {-kb}" if kb < 0 else "")
    return lin if den == 1 else f"floor(({lin})/{den})"


# The largest input (elements) probing runs the model at, where the reference sizes let
# it: the model's working memory grows with its input, and probing at 3x a large
# reference size (PP-OCR's detector at 1024x1024: 1.3 GB) is what the planner's memory
# would otherwise scale with.
PROBE_MAX_ELEMENTS = 1 << 22
_MAX_HALVINGS = 5
_STRIDE = 32  # vision backbones' usual total stride (partition._sizes.ROUND_TO too)


def _input_elements(model: onnx.ModelProto, env: Mapping[str, int]) -> int:
    inits = {t.name for t in model.graph.initializer}
    total = 0
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        n = 1
        for d in inp.type.tensor_type.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") else int(env.get(d.dim_param, 1))
        total += n
    return total


def _lattice(model: onnx.ModelProto, symbols: list[str], batch: list[str],
             base: dict[str, int], halvings: int) -> tuple[dict[str, int], list[dict[str, int]],
                                                           list[tuple[str, list[int]]]]:
    """The probe base (the non-batch sizes halved ``halvings`` times, where they divide
    evenly), the sizes to run at (the reference first, then the probe base, then each
    symbol at 2x and 3x the probe base, batch symbols at 1, 2, 3) and each symbol's
    points."""
    f = 1 << halvings
    # Only sizes that stay multiples of ``_STRIDE`` are halved: dims like floor(H/16)
    # are linear on multiples of 32, not on multiples of 24 (a fit there is no fit).
    pbase = {s: base[s] // f if s not in batch and base[s] % (f * _STRIDE) == 0 else base[s]
             for s in symbols}
    envs = [dict(base)]
    if pbase != base:
        envs.append(dict(pbase))
    varied: list[tuple[str, list[int]]] = []
    for s in symbols:
        b = pbase[s]
        xs = [1, 2, 3] if s in batch else [b, 2 * b, 3 * b]
        for x in xs:
            if x != b:
                e = dict(pbase)
                e[s] = x
                if e not in envs:
                    envs.append(e)
        varied.append((s, xs))
    return pbase, envs, varied


def _probe(model: onnx.ModelProto, names: list[str], symbols: list[str], batch: list[str],
           base: dict[str, int]) -> tuple[dict[str, tuple[tuple[Dim, ...], np.dtype]], tuple[str, ...]]:
    """Fit each dim of ``names`` from runs at a probe base and at 2x and 3x one symbol
    at a time (batch symbols at 1, 2, 3), checked at the reference ``base`` too.

    The probe base is the reference, halved (non-batch sizes that stay multiples of 32)
    until the largest probe input holds at most ``PROBE_MAX_ELEMENTS`` (at most 32x):
    fits are then exact on multiples of the halved sizes, the reference among them. Where the
    model does not run at the halved sizes, probing falls back to the reference and its
    multiples (the original lattice, whatever its memory)."""
    halvings = 0
    while halvings < _MAX_HALVINGS:
        _, envs, _ = _lattice(model, symbols, batch, base, halvings)
        if max(_input_elements(model, e) for e in envs) <= PROBE_MAX_ELEMENTS:
            break
        halvings += 1
    while True:
        pbase, envs, varied = _lattice(model, symbols, batch, base, halvings)
        seen = observe(model, names, envs, skip_failures=True)
        failed = {s for s, xs in varied for x in xs if x != pbase[s] and any(
            got is None and env[s] == x and all(env[o] == pbase[o] for o in symbols if o != s)
            for env, got in zip(envs, seen))}  # noqa: B905 (Python 3.8)
        if halvings == 0 or (not failed and all(g is not None for g in seen)):
            break
        halvings = 0  # the model rejects a halved size: probe as at first
    at_ref = seen[0]
    assert at_ref is not None
    at_base = seen[envs.index(pbase)]
    assert at_base is not None
    # A symbol the model takes at its base size only (PP-OCR's recognizer: height 48) is
    # not varied: its dims are taken as they are at the base.
    varied = [(s, xs) for s, xs in varied if s not in failed]
    envs, seen = ([e for e, g in zip(envs, seen) if g is not None],  # noqa: B905 (Python 3.8)
                  [g for g in seen if g is not None])
    base = pbase

    def lookup(sym: str, x: int) -> dict:
        if x == base[sym]:
            return at_base
        for env, got in zip(envs, seen):  # noqa: B905 (Python 3.8)
            if env[sym] == x and all(env[o] == base[o] for o in symbols if o != sym):
                return got
        raise AssertionError("probe point missing")

    out: dict[str, tuple[tuple[Dim, ...], np.dtype]] = {}
    approx: list[str] = []
    for n in names:
        shape0, dtype = at_ref[n]
        dims: list[Dim] = []
        exact = True
        for axis, d0 in enumerate(shape0):
            movers = []
            for sym, xs in varied:
                ys = [lookup(sym, x)[n][0][axis] if len(lookup(sym, x)[n][0]) > axis else -1 for x in xs]
                if len(set(ys)) > 1:
                    movers.append((sym, xs, ys))
            if not movers:
                dims.append(int(d0))
                continue
            if len(movers) == 1:
                sym, xs, ys = movers[0]
                fit = _affine(xs, ys)
                if fit is not None:
                    dims.append(_expr(sym, *fit))
                    continue
            elif len(movers) == 2 and movers[0][0] in batch:
                # batch times a function of one other symbol (a flattened N*H dim)
                (bs, bxs, bys), (sym, xs, ys) = movers
                per = [y // base[bs] for y in ys]
                fit = _affine(xs, per)
                if fit is not None and all(y == base[bs] * p for y, p in zip(ys, per)):  # noqa: B905 (Python 3.8)
                    inner = _expr(sym, *fit)
                    dims.append(f"{bs}*({inner})" if isinstance(inner, str) else f"{bs}*{inner}")
                    continue
            dims.append(int(d0))
            exact = False
        if not exact:
            approx.append(n)
        out[n] = (tuple(dims), dtype)
    # Every fitted expression must reproduce every observation.
    for n, (dims, _) in out.items():
        if n in approx:
            continue
        for env, got in zip(envs, seen):  # noqa: B905 (Python 3.8)
            if tuple(evaluate(d, env) for d in dims) != got[n][0]:
                approx.append(n)
                break
    return out, tuple(approx)
