from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import PartitionError

LOCAL = "local"
OFFLOAD = "offload"
SPLIT = "split"
# How crossing tensors travel to the cloud: as they are, or float32 ones at half precision
# (the cloud model casts them back; half the bytes for about three significant digits).
WIRE_FORMATS = ("fp32", "fp16")


@dataclass(frozen=True)
class CutCandidate:
    """One way to divide a model between the device and the cloud.

    ``tensors`` are the tensors that cross from the device to the cloud at this cut (the
    model inputs for ``offload``; none for ``local``). Times are at batch 1 in
    milliseconds: ``head_ms`` on the device, ``tail_ms`` in the cloud. ``up_bytes`` is
    what crosses the link as sent (see ``for_wire``); ``down_bytes`` is what comes back
    (the outputs).
    ``head_model`` and ``tail_model`` are file names relative to the plan's folder
    (empty when that side does nothing); ``cloud_model`` is the name the tail is served
    under (``<model>.tail.<cut_id>``, or for ``offload`` the whole model's name, or
    ``<model>.fp16`` in a plan for the fp16 wire format).
    """

    cut_id: str
    kind: str
    tensors: tuple[str, ...]
    head_ms: float
    tail_ms: float
    up_bytes: int
    down_bytes: int
    head_model: str = ""
    tail_model: str = ""
    cloud_model: str = ""
    head_energy_mj: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tensors"] = list(self.tensors)
        return data

    def for_wire(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``tensors`` as this candidate's cloud model takes them: the ones it was given
        FP16 inputs for (``extra["wire_fp16"]``, a plan made with ``wire="fp16"``) cast to
        half precision, the rest as they are."""
        halved = self.extra.get("wire_fp16")
        if not halved:  # an fp32 plan: nothing to cast on the request path
            return dict(tensors)
        return {k: (v.astype(np.float16) if k in halved and v.dtype == np.float32 else v)
                for k, v in tensors.items()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CutCandidate:
        try:
            return CutCandidate(
                cut_id=str(data["cut_id"]),
                kind=str(data["kind"]),
                tensors=tuple(data["tensors"]),
                head_ms=float(data["head_ms"]),
                tail_ms=float(data["tail_ms"]),
                up_bytes=int(data["up_bytes"]),
                down_bytes=int(data["down_bytes"]),
                head_model=str(data.get("head_model", "")),
                tail_model=str(data.get("tail_model", "")),
                cloud_model=str(data.get("cloud_model", "")),
                head_energy_mj=float(data.get("head_energy_mj", 0.0)),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PartitionError(f"cut candidate: missing or malformed field: {exc}") from exc


@dataclass(frozen=True)
class Plan:
    """The cut candidates kept for one model on one device, as written to ``plan.json``.

    ``candidates`` always holds the two extremes (``local`` and ``offload``) plus the
    splits worth keeping; ``chosen`` is the planner's pick for the link it was given.
    """

    model: str
    model_path: str
    device: str
    candidates: tuple[CutCandidate, ...]
    chosen: str = ""
    link: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    objective: str = "latency"
    inputs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # How the plan was made: profiles' sources, cost-model error, min-cut time, reason.
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def candidate(self, cut_id: str) -> CutCandidate:
        for c in self.candidates:
            if c.cut_id == cut_id:
                return c
        raise PartitionError(
            f"plan for '{self.model}': no cut '{cut_id}', expected one of "
            + ", ".join(c.cut_id for c in self.candidates)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_path": self.model_path,
            "device": self.device,
            "chosen": self.chosen,
            "objective": self.objective,
            "link": dict(self.link),
            "inputs": dict(self.inputs),
            "info": dict(self.info),
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Plan:
        try:
            return Plan(
                model=str(data["model"]),
                model_path=str(data.get("model_path", "")),
                device=str(data["device"]),
                candidates=tuple(CutCandidate.from_dict(c) for c in data["candidates"]),
                chosen=str(data.get("chosen", "")),
                link=dict(data.get("link", {})),
                objective=str(data.get("objective", "latency")),
                inputs=dict(data.get("inputs", {})),
                info=dict(data.get("info", {})),
            )
        except (KeyError, TypeError) as exc:
            raise PartitionError(f"plan: missing or malformed field: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def load(path: str | Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise PartitionError(f"{path}: plan file not found") from exc
        except json.JSONDecodeError as exc:
            raise PartitionError(f"{path}: not valid JSON: {exc}") from exc
        return Plan.from_dict(data)
