"""What every discovery method takes and returns (the registry's one signature).

``method(model, data, options) -> Result``: ``model`` a
:class:`~circuitbench.patching.PatchedModel`, ``data`` a :class:`MethodData`, ``options`` the
method's config sections as frozen dataclasses (``{"edge_pruning": EdgePruningConfig(...)}``).
See ``docs/methods.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitbench.cost import peak_memory_mb
from circuitbench.graph import Graph
from circuitbench.patching import PatchedModel
from circuitbench.tasks import TaskData

Head = tuple[int, int]
Options = Mapping[str, Any]


@dataclass(frozen=True)
class MethodData:
    """The prompts a method works on, and what an earlier stage may already have computed.

    ``train``: discovery, calibration and training prompts; ``validation``: the prompts selection
    rules evaluate on (path patching's grid, the FLAP sweeps). The test split never reaches a
    method: circuits are evaluated on it afterwards.

    ``circuit_edges``: the circuit size of the methods that are cut to a size or trained toward
    one (EAP, EAP-IG, Edge Pruning, HAP); ``reference``: a circuit to match instead (HAP trains
    toward the sparsity the reference achieved and is cut to its edge count); ``search_space``
    (APP) and ``eap_scores`` (HAP): the FLAP ∪ C-FLAP heads and the EAP scores when an earlier
    stage has them, else the method computes them itself.
    """

    train: TaskData
    validation: TaskData
    corruption: str
    circuit_edges: int | None = None
    reference: Graph | None = None
    search_space: list[Head] | None = None
    eap_scores: torch.Tensor | None = None
    progress: bool = True

    def budget(self, method: str) -> int:
        if self.circuit_edges is None or self.circuit_edges < 1:
            raise ValueError(f"{method} needs a circuit size (circuit_edges >= 1)")
        return self.circuit_edges


@dataclass
class Result:
    """A method's circuit (``graph``: ``edge_in_graph`` the circuit; edge and node scores where
    the method has them; ``meta`` its rule and choices), what it cost, and the method-specific
    record a stage writes out (the path-patching grid, the pruning sweeps, mask parameters...).

    ``cost`` always holds ``wall_seconds``, ``cpu_seconds``, ``forward_passes`` and
    ``peak_memory_mb``; a method adds what it counts itself (FLOPs, backward passes)."""

    graph: Graph
    record: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)


Run = Callable[[PatchedModel, MethodData, Options], Result]


@dataclass(frozen=True)
class Method:
    """A registry entry: the function, the config sections it reads, and what it finds."""

    name: str
    run: Run
    sections: tuple[str, ...]
    level: str  # head | edge: what the method selects

    def __call__(self, model: PatchedModel, data: MethodData, options: Options) -> Result:
        missing = [s for s in self.sections if s not in options]
        if missing:
            raise ValueError(f"{self.name} needs the config section(s) {', '.join(missing)}")
        passes, started, cpu = model.forward_passes, time.perf_counter(), time.process_time()
        result = self.run(model, data, options)
        result.cost = {
            **result.cost,
            "wall_seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
            "forward_passes": model.forward_passes - passes,
            "peak_memory_mb": peak_memory_mb(model.device),
        }
        return result
