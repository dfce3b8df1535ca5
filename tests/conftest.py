"""Shared test set-up. Area-specific fixtures live in the test modules themselves."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

# Hypothesis explores new random inputs on every local run (that is how it finds bugs);
# in CI (CI=true) it replays a fixed, derandomized set so that a red CI is reproducible.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


# Scheduling for `make test` (pytest-xdist --dist loadgroup --no-loadscope-reorder). Each
# module is one unit that a single worker runs, so its module-scoped fixtures (a trained
# study, stand-in data sets) are built once; test_studies.py's tests are independent studies
# of a few minutes each, so they are spread over the workers instead. Units start longest
# first (the modules below, from `make test`'s slowest-tests list), so no worker is left
# with a long module after the others have finished.
SPREAD_MODULES = ("test_studies.py",)
LONGEST_FIRST = ("test_studies.py", "test_dask.py", "test_readme.py", "test_e2e.py", "test_report_clean.py", "test_reliability.py", "test_bench.py", "test_train.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.path.name))

    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept
