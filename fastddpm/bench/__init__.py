"""Performance and quality tooling: `python -m fastddpm.bench` (fastddpm/bench/cli.py).

    cli.py      the command line: sizes per device, the environment, the run
    suites.py   the timed suites (kernels, sampler and methods, training step)
    timing.py   timers, byte and FLOP counts, copy bandwidth, NVML
    report.py   the printed table and the plot
    static.py   --static: the kernels' machine code read as a cost report (aot.py compiles it)
    quality.py  --quality: quality per model evaluation on real data
"""

from .cli import main

__all__ = ["main"]
