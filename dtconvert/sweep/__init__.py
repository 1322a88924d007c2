"""``dtconvert sweep``: where to split and how hard to compress, measured side by side.

For one recipe, each split configuration (where the token sequence is pooled, the bottleneck
width) is trained on a short schedule and exported to ExecuTorch through the same pipeline as
``dtconvert export``: int8 (XNNPACK), and fp32 where the fp32 wire is asked. Each
(configuration, wire) row then gets held-out accuracy per task of the fp32 model and end to end
through ExecuTorch, wire bytes per image, device parameters and FLOPs, and ExecuTorch XNNPACK
latency at each batch size, all rows timed round-robin in one session so that they share the
machine's noise. The report is plain data; ``dtconvert.report.sweep`` renders it.

* ``parse``: the grid from the command line;
* ``configs``: training, exporting and measuring one configuration;
* ``timing``: latency of every row, interleaved;
* ``run``: ``run_sweep``, the steps in order, and the funnel;
* ``check``: ``validate_sweep``, the report against its schema, itself and the files.
"""

from dtconvert.sweep.check import validate_sweep
from dtconvert.sweep.parse import WIRES, SplitConfig, default_pool_at, parse_bottleneck, parse_pool_at, parse_wire
from dtconvert.sweep.run import SWEEP_FORMAT, SWEEP_VERSION, funnel, run_sweep

__all__ = [
    "SWEEP_FORMAT",
    "SWEEP_VERSION",
    "WIRES",
    "SplitConfig",
    "default_pool_at",
    "funnel",
    "parse_bottleneck",
    "parse_pool_at",
    "parse_wire",
    "run_sweep",
    "validate_sweep",
]
