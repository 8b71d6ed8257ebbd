"""Process settings that make two runs of one step on one machine agree bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_package_asks_mkl_for_repeatable_products_unless_the_user_chose():
    """MKL reads ``MKL_CBWR`` at its first call: the package sets it on import, before any
    product, and leaves a user's own choice alone."""
    probe = "import os, circuitbench; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    ours = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert ours.stdout.strip() == "AUTO,STRICT", ours.stderr
    env["MKL_CBWR"] = "COMPATIBLE"
    theirs = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert theirs.stdout.strip() == "COMPATIBLE", theirs.stderr
