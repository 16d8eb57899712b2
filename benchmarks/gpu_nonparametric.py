"""Issue 10's one-run table of the nonparametric layers on one GPU: ``benchmarks/gpu_tiled.py`` at B = 8,
H = 16, d = 64 and T in {1024, 4096, 16384}, with its ``--rows issue`` selection: per family (causal
softmax float32 and float64, sliding window 512, window 512 + 4 sinks, forgetting attention, local linear
attention) the layer's ``tiled`` call, the kernel it runs alone, the peer (torch SDPA float32 with the
same mask, SDPA + the dense gate bias and fla's ``parallel_forgetting_attn`` for forgetting attention),
the ratio, the max relative difference from the float64 NumPy reference, the peak device memory, and
local linear's share of the card's float32 matrix-product rate measured in the same run.

Run: ``python -m benchmarks.gpu_nonparametric`` on a GPU machine (extra arguments go to ``gpu_tiled``,
later ones win: ``--T 1024`` for a short run, ``--cpu-dry-run`` to check it on NumPy). Prints a table.
"""

from __future__ import annotations

import sys

from benchmarks import gpu_tiled

DEFAULTS = [
    "--T",
    "1024,4096,16384",
    "--ll-max-T",
    "16384",
    "--runs",
    "3",
    "--budget-s",
    "420",
    "--rows",
    "issue",
]


def main(argv=None):
    return gpu_tiled.main(DEFAULTS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
