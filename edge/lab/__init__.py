"""The lab: emulate links, replay traces, run the demo, export deployments.

Owns: the user-space link emulator and trace readers, trace-driven replay that compares
strategies, the demo, and Triton/KServe/Kubernetes export of a plan.
May import: every other room of ``edge``, ``partition``, ``devices``; heavy plotting only
inside the functions that draw.
"""

from __future__ import annotations

from edge.lab._emulator import LinkEmulator
from edge.lab._traces import Trace, TraceClock, bundled_trace, load_trace

__all__ = ["LinkEmulator", "Trace", "TraceClock", "bundled_trace", "load_trace"]
