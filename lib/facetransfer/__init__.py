"""facetransfer: reproducible transfer-learning studies of face gender and age.

The notebooks in ``notebooks/`` tell the story; this package does the work. Submodules
load on first use, so ``import facetransfer as ft; ft.data.prepare(...)`` works without
importing Keras until a step needs it.
"""

import importlib
import sys

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


# A saved model.keras holds facetransfer's own layers (models/layers.py). Keras finds them by
# their registered names, so they must be registered before keras.models.load_model: with
# Keras already imported, `import facetransfer` registers them (the CLI, which imports
# facetransfer first, does not pay for importing Keras).
if "keras" in sys.modules:
    importlib.import_module("facetransfer.models.layers")
