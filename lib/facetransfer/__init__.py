"""facetransfer: reproducible transfer-learning studies of face gender and age.

The notebooks in ``notebooks/`` tell the story; this package does the work. Submodules
load on first use, so ``import facetransfer as ft; ft.data.prepare(...)`` works without
importing Keras until a step needs it.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "artifacts", "bench", "cli", "compare", "data", "datasets", "errors", "evaluate",
    "features", "feeder", "images", "io", "models", "notebook", "params", "plots", "report", "runner",
    "runtime", "saliency", "search", "splits", "stats", "study", "synthetic", "train",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"facetransfer.{name}")
    raise AttributeError(f"module 'facetransfer' has no attribute {name!r}")
