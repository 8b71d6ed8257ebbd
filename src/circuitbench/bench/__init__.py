"""Benchmarks (``circuitbench bench <name>``): speed targets live here, never in timed tests.

- ``evaluate``, ``pp`` (:mod:`.forward`): the patched pass vs a plain forward; batched path
  patching vs the authors-style baseline and the oracle;
- ``eap``, ``ep``, ``hap`` (:mod:`.discovery`): EAP vs a plain forward; seconds per Edge Pruning
  step; Edge Pruning vs HAP steps;
- ``gpu`` (:mod:`.gpu`): every method at GPT-2-small shape in one run, one CSV (``--shape tiny``
  on CPU in the tests).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from circuitbench.bench import discovery, forward, gpu

BENCHMARKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "evaluate": forward.run_evaluate,
    "pp": forward.run_pp,
    "eap": discovery.run_eap,
    "ep": discovery.run_ep,
    "hap": discovery.run_hap_bench,
    "gpu": gpu.run_gpu,
}
