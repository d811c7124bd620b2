"""Analyses of predictions: accuracy against measured proteins (`evaluate`) and a PCA + ridge baseline.

Exports are resolved lazily so that importing this package (or `sctranslator`) loads neither
matplotlib nor the heavier analysis modules until they are used.
"""

from __future__ import annotations

# Bound eagerly, not through __getattr__: importing the submodule `analysis.evaluate` would set the
# package attribute `evaluate` to the module and shadow a lazily resolved function. The module
# itself defers its heavy imports, so this costs only numpy.
from sctranslator.analysis.evaluate import evaluate
from sctranslator.util.lazy import lazy_getattr

_EXPORTS = {
    "compute_metrics": "sctranslator.analysis.metrics",
    "RidgeBaseline": "sctranslator.analysis.baseline",
    "heldout_split": "sctranslator.analysis.baseline",
}

__all__ = ["evaluate", *_EXPORTS]


__getattr__ = lazy_getattr("sctranslator.analysis", _EXPORTS)
