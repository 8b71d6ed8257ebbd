"""circuitbench: a reproducible pipeline for automated circuit discovery."""

__version__ = "0.1.0"
