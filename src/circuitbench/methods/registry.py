"""The method registry: every stage (the pipeline's and the planted one) runs methods from here.

Adding a method is one module with an entry ``(model, data, options) -> Result``
(:mod:`circuitbench.methods.base`), one line here and one in ``plan.METHOD_SECTIONS`` (the
config sections it reads); a new config section gets a frozen dataclass in :data:`SECTIONS` and
an entry in the workflow's schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from circuitbench.evaluate import EvaluationOptions
from circuitbench.methods import acdc, app, eap, edge_pruning, flap, hap, path_patching
from circuitbench.methods.base import Method, Options
from circuitbench.options import from_options
from circuitbench.plan import METHOD_SECTIONS

# Config section -> its frozen dataclass.
SECTIONS: dict[str, type] = {
    "path_patching": path_patching.PathPatchingOptions,
    "flap": flap.FlapConfig,
    "app": app.AppOptions,
    "eap": eap.EAPConfig,
    "eap_ig": eap.EAPIGOptions,
    "edge_pruning": edge_pruning.EdgePruningConfig,
    "hap": hap.HAPConfig,
    "acdc": acdc.ACDCOptions,
    "evaluation": EvaluationOptions,
}

# Name -> (entry, what it selects); the sections each reads are plan.METHOD_SECTIONS (the
# workflow needs them without importing torch).
_ENTRIES = {
    "path_patching": (path_patching.discover, "head"),
    "flap": (flap.discover_flap, "head"),
    "cflap": (flap.discover_cflap, "head"),
    "app": (app.discover, "head"),
    "eap": (eap.discover_eap, "edge"),
    "eap_ig": (eap.discover_eap_ig, "edge"),
    "edge_pruning": (edge_pruning.discover, "edge"),
    "hap": (hap.discover, "edge"),
    "acdc": (acdc.discover, "edge"),
}
METHODS: dict[str, Method] = {
    name: Method(name, run, METHOD_SECTIONS[name], level) for name, (run, level) in _ENTRIES.items()
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def parse_sections(
    sections: Mapping[str, Mapping[str, Any] | None], names: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Config sections (JSON objects) as their dataclasses. ``names``: the sections a caller
    needs (absent ones take every default); others given are an error."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {', '.join(unknown)}")
    wanted = tuple(sections) if names is None else names
    extra = sorted(set(sections) - set(wanted))
    if extra:
        raise ValueError(f"options for section(s) not used here: {', '.join(extra)}")
    return {name: from_options(SECTIONS[name], sections.get(name), name) for name in wanted}


def method_options(name: str, sections: Mapping[str, Mapping[str, Any] | None]) -> Options:
    """The options of method ``name`` from its config sections."""
    return parse_sections(sections, method(name).sections)
