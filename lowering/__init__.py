"""Lowering checker: trace a dsref model into regions, run a hand-tiled kernel per region on
a CPU tile emulator, and diff every region against the reference.

    import lowering
    rep = lowering.diff("v32.decode_front", cfg, ins, mode="isolated", backend="numpy")
    rep.verdict, rep.regions[0].outputs[0].max_ulp, rep.to_json()
"""

from lowering.pipeline import MODES, diff, run_region
from lowering.registry import kernel_for, kernels
from lowering.report import Report
from lowering.trace import Trace, trace

__all__ = ["MODES", "Report", "Trace", "diff", "kernel_for", "kernels", "run_region", "trace"]
