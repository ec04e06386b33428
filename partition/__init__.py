"""ONNX graph analysis, per-layer profiling, cut planning, splitting and export.

Public API (everything works on ``onnx.ModelProto`` in memory; file paths are thin
wrappers):

``LayerGraph.from_model(model, batch=1, sizes=None)``
    The layer DAG: ``nodes`` (compute nodes; constants and weight-only producers are
    folded away so a cut never carries weights; an ``If``/``Loop``/``Scan`` reads what
    its bodies read from the outer scope), ``tensors`` (every activation with dtype,
    ``dims`` as functions of the dynamic input dims (``symbols``: ``N``, ``H``, ``W``;
    ``-1`` and unnamed dims too), ``bytes(batch, sizes)`` exact at any size, never
    negative; ``shape`` has ``None`` for dynamic dims), ``sizes`` (the reference sizes),
    ``inputs``, ``outputs``, ``order`` (topological), ``crossing(device_nodes)``,
    ``device_side(cut_tensors)``, ``frontiers()``, ``ideals()`` (every valid cut, when
    there are not too many).

``candidate_cuts(graph)``
    The cuts worth keeping: block boundaries (single-tensor frontiers; every edge on a
    chain) and in-branch frontiers cheaper than the boundaries around them.

``split_model(model, cut_tensors) -> (head, tail)``
    Head: model inputs -> cut tensors. Tail: cut tensors (+ model inputs it still
    needs) -> model outputs. Both checker-valid, dynamic batch kept. ``Splitter(model)``
    indexes a model once for many splits. ``half_precision_inputs(model, names)`` declares
    float32 inputs FP16 and casts them back inside (a tail for the ``fp16`` wire format).

``profile_model(model, device, runs=10) -> Profile``
    Per-node median ms with ONNX Runtime's profiler, here, on behalf of ``device``
    (divided by its ``relative_speed``, and marked ``emulated``). ``Profile.load/save``,
    ``fetch_cloud_profile(url, model)`` (``POST {url}/v2/models/{m}/profile``).

``CostModel.fit(graph, node_ms)``
    Per-device regression of node time on FLOPs and bytes (per op type where there is
    data), ``median_abs_pct_error`` measured out of sample.

``predict(candidate, bandwidth_bps, rtt_s, device) -> (latency_ms, energy_mj)``
    Pure. latency = head + up_bytes*8/bw + RTT + tail + down_bytes*8/bw (local: head);
    energy = P_active*head + P_tx*upload + P_rx*download + P_idle*(RTT + tail).

``choose(candidates, bandwidth_bps, rtt_s, device, objective="latency", slo_ms=None)``
    The best candidate for a link (latency, energy, or energy within a latency SLO).

``min_cut(graph, dev_ms, cloud_ms, bandwidth_bps, rtt_s, device, objective)``
    The exact optimum over every valid cut of the DAG (DADS-style s-t min cut).

``build_plan(model_path, device, cloud, bandwidth_bps, rtt_s, objective="latency",
slo_ms=None, out_dir=None, keep=8) -> Plan``
    Profile, enumerate, take the min-cut optimum, measure the cuts that can win, choose;
    with ``out_dir`` write ``plan.json``, ``head.<cut>.onnx``, the Triton repository
    ``repository/<model>.tail.<cut>/1/model.onnx`` + ``config.pbtxt``, the whole model,
    the profiles and ``plan.png``. ``cloud``: service URL, recorded profile file or
    dict, or ``"here"`` (this host is the cloud).

``measure_candidates(model, candidates, device_scale, threads)`` / ``rescale(candidates,
device_factor, cloud_factor)``
    Time head and tail sessions for real (as ratios to an interleaved whole-model run);
    correct all predictions by an observed whole-model time on either side.

``cost_at(candidate, sizes)`` / ``bind_sizes(plan.inputs, shapes)`` / ``parse_shapes(text)``
    A candidate's (head ms, tail ms, up bytes, down bytes) at any sizes of the model's
    dynamic dims: bytes exact from expressions, times interpolated between the sizes the
    plan was profiled at (``build_plan(shapes=...)``, ``--shapes``); the sizes a
    request's input shapes give; ``"H=640,W=640"`` parsed. ``input_dims(model)``: each
    input's dims named as the plan names them (symbols where dynamic) and the batch
    symbols, from the inputs alone.

``encode(array, codec)`` / ``decode(data, codec, shape, dtype)``
    Optional compression of crossing tensors: ``fp16``, ``int8`` (per-tensor affine),
    ``fp32``, each optionally ``+zstd`` or ``+lz4``.

``portable_model(model)`` / ``save_model(model, path)``
    A model stamped with an IR version (<= 9) the oldest supported ONNX Runtime (1.16)
    reads; every ONNX file edgecut writes goes through ``save_model``.

``choose_stream(candidates, bandwidth_bps, rtt_s, device, slo_ms)`` / ``stream_stages``
    A stream's plan: the highest pipeline rate (1 / slowest of device head, uplink,
    cloud tail, downlink) whose per-frame latency meets the SLO, exact over the candidates.

``plan_chain(graph, node_ms, hops, device, objective, slo_ms)`` -> ``ChainPlan``
    A plan over an ordered chain of nodes (device, edge nodes, cloud) with a ``Hop`` per
    link: every layer labelled with a node so data only moves forward; exact min cut on
    an expanded graph for latency and energy, enumeration of nested ideals for stream
    throughput (``enumerate_chain``, ``evaluate_labels``, ``min_cut_chain``).
    ``chain_segments`` / ``segment_models`` / ``write_chain``: what each node receives,
    runs and sends, as models and a Triton repository per node (a middle node relays).

``parse_bandwidth("20Mbit") -> bit/s``, ``parse_duration("40ms") -> s``.
"""

from __future__ import annotations

from partition._build import (
    Measurement,
    build_plan,
    measure_candidates,
    rescale,
    write_plan_dir,
)
from partition._chain import (
    CHAIN_OBJECTIVES,
    ChainCost,
    ChainPlan,
    Hop,
    enumerate_chain,
    evaluate_labels,
    ideal_sets,
    min_cut_chain,
    plan_chain,
)
from partition._chain_export import (
    Segment,
    chain_segments,
    device_candidate,
    segment_models,
    write_chain,
)
from partition._compress import decode, encode, evaluate_compression
from partition._costmodel import CostModel
from partition._graph import LayerGraph, LayerNode, TensorInfo
from partition._onnx import load_model
from partition._planner import (
    Choice,
    MinCut,
    candidate_cuts,
    choose,
    cut_id_for,
    make_candidates,
    min_cut,
    predict,
    side_times,
)
from partition._portable import MAX_IR_VERSION, MAX_OPSETS, portable_model, save_model
from partition._profile import Profile, fetch_cloud_profile, profile_model
from partition._shapes import input_dims
from partition._sizes import bind as bind_sizes
from partition._sizes import cost_at, parse_shapes
from partition._sources import resolve_cloud
from partition._split import Splitter, half_precision_inputs, split_model
from partition._stream import StreamChoice, bound_fps, choose_stream, stream_stages
from partition._types import LOCAL, OFFLOAD, SPLIT, CutCandidate, Plan
from partition._units import parse_bandwidth, parse_duration
from partition.zoo import ZOO_MODELS, build_zoo, materialize, trained_model, zoo_model

__all__ = [
    "CHAIN_OBJECTIVES",
    "LOCAL",
    "MAX_IR_VERSION",
    "MAX_OPSETS",
    "OFFLOAD",
    "SPLIT",
    "ZOO_MODELS",
    "bound_fps",
    "bind_sizes",
    "build_plan",
    "build_zoo",
    "candidate_cuts",
    "ChainCost",
    "ChainPlan",
    "Choice",
    "choose",
    "chain_segments",
    "choose_stream",
    "CostModel",
    "cost_at",
    "input_dims",
    "cut_id_for",
    "CutCandidate",
    "decode",
    "device_candidate",
    "encode",
    "enumerate_chain",
    "evaluate_compression",
    "evaluate_labels",
    "fetch_cloud_profile",
    "half_precision_inputs",
    "Hop",
    "ideal_sets",
    "input_dims",
    "LayerGraph",
    "LayerNode",
    "load_model",
    "make_candidates",
    "materialize",
    "measure_candidates",
    "Measurement",
    "min_cut",
    "min_cut_chain",
    "MinCut",
    "parse_bandwidth",
    "parse_duration",
    "portable_model",

    "parse_shapes",
    "Plan",
    "plan_chain",
    "predict",
    "Profile",
    "profile_model",
    "rescale",
    "save_model",

    "segment_models",
    "resolve_cloud",
    "side_times",
    "split_model",
    "Segment",
    "Splitter",
    "stream_stages",
    "StreamChoice",
    "TensorInfo",
    "trained_model",
    "write_chain",
    "write_plan_dir",
    "zoo_model",
]
