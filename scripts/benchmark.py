"""Throughput benchmarks of metajax (and PyTorch references): JSON lines on stdout.

The same as ``metajax bench``; see :mod:`metajax.app.bench` for the workloads and options.

    python scripts/benchmark.py                                   # every workload, library defaults
    python scripts/benchmark.py --workload maml-omniglot --torch  # with the PyTorch references
    python scripts/benchmark.py --workload maml-omniglot --task-batching vmap,map --conv-impl xla,patches
    python scripts/benchmark.py --workload maml-omniglot --order second --meta-batch 8 --inner-steps 1,5,20 --remat both
    python scripts/benchmark.py --workload maml-omniglot --pool stride,max --meta-batch 8,16,32,64,128,256 --torch
    python scripts/benchmark.py --workload maml-omniglot,protonet-omniglot --image miniimagenet --shots 1,5 --torch

Tables from its JSON lines: scripts/perf_tables.py (docs/performance.md lists the commands).
"""

import sys

from metajax.app.bench import main

if __name__ == "__main__":
    sys.exit(main())
