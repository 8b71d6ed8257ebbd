"""circuitbench: a reproducible pipeline for automated circuit discovery."""

import os

# Intel MKL (PyTorch's CPU BLAS) may pick its code path by the alignment of each array, so two runs
# of one step on one machine can differ in the last bits, and scores near zero or ties between
# them follow. Strict conditional numerical reproducibility makes its matrix products bitwise
# repeatable on a given CPU; it has to be set before MKL's first call. A user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
