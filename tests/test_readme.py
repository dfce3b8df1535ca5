"""Every command in README.md's ```bash blocks is executed here, as written.

Why read the README rather than generate it: the README is prose written for people;
generating it from test data would scatter it over the tests. Reading its blocks keeps
one text and fails the moment a command there stops working.

What is substituted, and only that: ``.venv/bin/`` is this test's own environment (the
one ``make test`` built), and ``$RESULTS`` (the README's own variable for where its
examples write) is a temporary folder. Commands that build environments, download
gigabytes or train for minutes are listed in :data:`INSTEAD` with what runs in their place
and why; every other command the README shows runs for real, and a listed command that
the README no longer shows fails the test (the list must not go stale).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _studyutil import quiet_env
from test_report import make_study

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
TF_PIN = re.search(r"^tensorflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)[1]

# README command → (what the test runs instead, why).
INSTEAD = {
    "make report": ("make -n report", "runs the demo study for minutes; tests/test_studies.py::test_demo_runs runs it on tiny data"),
    "make report WORKERS=": ("make -n report WORKERS=", "runs the demo study serially for minutes; tests/test_studies.py::test_demo_runs runs it on tiny data"),
    "make test": ("make -n test", "runs this very suite"),
    "make venv": ("make -n venv", "builds .venv (a download); this test runs inside the .venv it builds"),
    "make venv-jax": ("make -n venv-jax", "builds .venv-jax (about 600 MB); tests/test_environments.py checks the recipe"),
    '.venv/bin/pip install "tensorflow[and-cuda]==2.21.0"': (
        f"test {TF_PIN} = 2.21.0",
        "downloads CUDA wheels; the pin must equal requirements.txt's",
    ),
    ".venv/bin/facetransfer run params/celeba30k_vgg16.yaml --set data.root=/data/celeba30k --results $RESULTS": (
        ".venv/bin/facetransfer run params/celeba30k_vgg16.yaml --set data.root=/data/celeba30k --results $RESULTS --dry-run",
        "needs the real CelebA30k copy and ImageNet weights; the dry run checks every argument",
    ),
    ".venv/bin/facetransfer run params/demo.yaml --set train.epochs=2 --results $RESULTS": (
        ".venv/bin/facetransfer run params/demo.yaml --set train.epochs=2 --results $RESULTS --dry-run",
        "trains seven models for minutes (test_demo_runs runs them on tiny data); the next command renders a stand-in study",
    ),
    ".venv/bin/facetransfer run params/demo.yaml --workers 2": (
        ".venv/bin/facetransfer run params/demo.yaml --workers 2 --results $RESULTS --dry-run",
        "runs the whole demo on a local Dask cluster for minutes; tests/test_dask.py runs studies on Dask",
    ),
    ".venv/bin/facetransfer run params/demo.yaml --scheduler tcp://10.0.0.5:8786": (
        ".venv/bin/facetransfer run params/demo.yaml --scheduler tcp://10.0.0.5:8786 --results $RESULTS --dry-run",
        "the address is an example of a remote cluster (never contacted here); tests/test_dask.py uses a real scheduler on 127.0.0.1",
    ),
    '.venv/bin/python -c "from dask_cuda import LocalCUDACluster; import time; c = LocalCUDACluster(threads_per_worker=1, scheduler_port=8786); print(c.dashboard_link, flush=True); time.sleep(10**9)" &': (
        "true",
        "needs dask-cuda and NVIDIA GPUs, and runs until stopped",
    ),
    ".venv/bin/facetransfer run params/adience_architectures.yaml --scheduler tcp://127.0.0.1:8786": (
        ".venv/bin/facetransfer run params/adience_architectures.yaml --scheduler tcp://127.0.0.1:8786 --results $RESULTS --dry-run",
        "needs the Dask cluster above, the real Adience copy and ImageNet weights; the dry run checks every argument",
    ),
    ".venv/bin/python slurm_cluster.py &": ("true", "needs a Slurm cluster (checked once by hand; docs/benchmarks.md has the log)"),
    ".venv/bin/facetransfer run params/adience_architectures.yaml --scheduler tcp://$(hostname):8786": (
        ".venv/bin/facetransfer run params/adience_architectures.yaml --scheduler tcp://$(hostname):8786 --results $RESULTS --dry-run",
        "needs the Slurm cluster above and the real Adience copy; the dry run checks every argument",
    ),
    "KERAS_BACKEND=jax .venv-jax/bin/facetransfer run params/demo.yaml --results $RESULTS/jax": (
        "test ! -x .venv-jax/bin/facetransfer || KERAS_BACKEND=jax .venv-jax/bin/facetransfer run params/demo.yaml --results $RESULTS/jax --dry-run",
        "needs .venv-jax (make venv-jax); dry run when it exists",
    ),
}


def bash_blocks(text: str) -> list[list[str]]:
    """The command lines of each ```bash block (comments after the command kept)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [[line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")] for block in blocks]


def command_of(line: str) -> str:
    """The command without its trailing ``# comment`` (quotes in commands hold no #)."""
    return re.sub(r"\s+#.*$", "", line).strip()


BLOCKS = bash_blocks(README.read_text())


def script_for(block: list[str]) -> str:
    lines = ["set -euo pipefail"]
    for line in block:
        command = command_of(line)
        command = INSTEAD.get(command, (command, ""))[0]
        command = re.sub(r"(?<![\w-])\.venv/bin/", f"{BIN}/", command)
        lines.append(command)
    return "\n".join(lines)


def test_the_readme_shows_commands_and_every_substitute_is_still_in_it():
    commands = {command_of(line) for block in BLOCKS for line in block}
    assert len(BLOCKS) >= 5
    assert not set(INSTEAD) - commands, f"INSTEAD lists commands the README no longer shows: {set(INSTEAD) - commands}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    make_study(root, synthetic=True)  # a stand-in for the demo study the README re-renders
    return root / "results"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[command_of(b[0])[:40] for b in BLOCKS])
def test_readme_block_runs_as_written(index, results):
    script = script_for(BLOCKS[index])
    env = {**quiet_env(), "RESULTS": str(results), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"README block {index} failed:\n{script}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    if "papermill notebooks/03_finetune.ipynb" in script:
        assert (results / "03_finetune.ipynb").is_file()
        assert not (REPO / "notebooks" / "results").exists()  # nothing written relative to the cwd
    if "data summary" in script:
        assert "checked     every image decoded" in proc.stdout and "records     100" in proc.stdout
