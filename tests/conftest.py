"""Shared test set-up. Area-specific fixtures live in the test modules themselves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

# Hypothesis explores new random inputs on every local run (that is how it finds bugs);
# in CI (CI=true) it replays a fixed, derandomized set so that a red CI is reproducible.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
