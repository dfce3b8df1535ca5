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


# The slowest modules first (seconds of test time, make test on 2 cores, 2026-11-25), so
# that under ``--dist loadfile --no-loadscope-reorder`` each xdist worker starts on a long
# one and the short ones fill the end of the run (longest-first scheduling). Modules not
# listed keep their collection order, after these; tests keep their order in a module.
SLOWEST_FIRST = (
    "test_studies.py",  # 808
    "test_dask.py",  # 425
    "test_e2e.py",  # 240
    "test_readme.py",  # 234
    "test_reliability.py",  # 142
    "test_bench.py",  # 91
    "test_train.py",  # 75
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
