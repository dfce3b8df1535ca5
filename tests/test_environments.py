"""The JAX environment and kernel choice: `make venv-jax`, the kernel of the running
Keras backend, and one-line errors for a missing kernel or a missing backend.

`make venv-jax` downloads about 600 MB, so it is checked with `make -n` (what it would
run), not built; the kernel choice uses a fake kernelspec folder on JUPYTER_PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facetransfer import runner
from facetransfer.errors import FacetransferError

REPO = Path(__file__).resolve().parents[1]


def test_make_venv_jax_builds_without_tensorflow_and_registers_its_own_kernel():
    proc = subprocess.run(["make", "-n", "venv-jax"], cwd=REPO, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert "test -x .venv-jax/bin/python || python3 -m venv .venv-jax" in lines
    assert "grep -v '^tensorflow' requirements.txt > .venv-jax/requirements-without-tensorflow.txt" in lines
    assert ".venv-jax/bin/python -m pip install --quiet -r .venv-jax/requirements-without-tensorflow.txt -r requirements-jax.txt" in lines
    assert ".venv-jax/bin/python -m pip install --quiet --no-deps -e ." in lines
    install = next(line for line in lines if "ipykernel install" in line)
    assert "--sys-prefix --name facetransfer-jax" in install and "--env KERAS_BACKEND jax" in install
    assert not any(".venv/" in line for line in lines)  # never touches the TensorFlow venv
    assert "jax[cpu]" in (REPO / "requirements-jax.txt").read_text()


def test_make_report_runs_on_two_dask_workers_unless_workers_is_empty():
    def report_line(*args: str) -> str:
        proc = subprocess.run(["make", "-n", "report", *args], cwd=REPO, capture_output=True, text=True, check=True)
        return next(line for line in proc.stdout.splitlines() if "facetransfer run" in line)

    assert report_line().endswith("facetransfer run params/demo.yaml --workers 2")
    assert report_line("WORKERS=").rstrip().endswith("facetransfer run params/demo.yaml")
    assert report_line("WORKERS=4").endswith("--workers 4")


def test_make_venv_compiles_bytecode():
    """PYTHONDONTWRITEBYTECODE=1 (set on these machines) stops Python writing .pyc files: without
    them at install time every kernel compiles TensorFlow's sources again (about 10 s each)."""
    proc = subprocess.run(["make", "-n", "-B", "venv"], cwd=REPO, capture_output=True, text=True, check=True)
    install = next(line for line in proc.stdout.splitlines() if "uv pip install" in line)
    assert "--compile-bytecode" in install and "-r requirements.txt" in install


def make_shows_glibc_tunables(env: dict) -> str:
    """GLIBC_TUNABLES as every command of the Makefile sees it (an extra target prints it)."""
    show = 'show-glibc-tunables: ; @echo "$$GLIBC_TUNABLES"'
    proc = subprocess.run(["make", "-s", "--eval", show, "show-glibc-tunables"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_make_gives_its_commands_and_the_kernel_the_malloc_tuning_and_yours_wins():
    """glibc reads GLIBC_TUNABLES once, at process start: make exports it to pytest, the CLI and
    the Dask workers it starts, and the kernel spec carries it to every notebook kernel."""
    without = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    shipped = make_shows_glibc_tunables(without)
    assert shipped.split(":") == ["glibc.malloc.top_pad=268435456", "glibc.malloc.hugetlb=1"]
    assert make_shows_glibc_tunables({**without, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == "glibc.malloc.arena_max=2"
    for target, kernel in (("venv", "facetransfer"), ("venv-jax", "facetransfer-jax")):
        proc = subprocess.run(["make", "-n", "-B", target], cwd=REPO, env=without, capture_output=True, text=True, check=True)
        install = next(line for line in proc.stdout.splitlines() if "ipykernel install" in line)
        assert f"--name {kernel} " in install and f'--env GLIBC_TUNABLES "{shipped}"' in install
    # the kernel this suite's notebooks run on (the .venv that `make test` built)
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("facetransfer")
    assert spec.env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES", shipped)


def fake_kernel(folder: Path, name: str) -> None:
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": name, "language": "python"}))


@pytest.mark.parametrize("backend,kernel", [("jax", "facetransfer-jax"), ("tensorflow", "facetransfer")])
def test_run_picks_the_kernel_of_the_running_backend(tmp_path, monkeypatch, backend, kernel):
    fake_kernel(tmp_path, "facetransfer-jax")
    fake_kernel(tmp_path, "facetransfer")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setattr(runner, "_keras_backend", lambda: backend)
    assert runner._check_kernel(None) == kernel
    assert runner._check_kernel("facetransfer") == "facetransfer"  # named explicitly: that one


def test_missing_kernel_is_one_line_naming_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setattr(runner, "_keras_backend", lambda: "jax")
    with pytest.raises(FacetransferError) as exc:
        runner._check_kernel(None)
    message = str(exc.value)
    assert "\n" not in message and "'facetransfer-jax' (Keras backend jax) not found" in message
    assert "run `make venv-jax` and use KERAS_BACKEND=jax .venv-jax/bin/facetransfer" in message


BLOCK_TENSORFLOW = textwrap.dedent(
    """
    import sys

    class NoTensorFlow:  # as if tensorflow were not installed
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoTensorFlow())
    from facetransfer.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_missing_backend_is_one_line_naming_the_environment(tmp_path):
    script = tmp_path / "no_tf.py"
    script.write_text(BLOCK_TENSORFLOW)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO / "lib")}
    proc = subprocess.run(
        [sys.executable, str(script), "run", str(REPO / "params" / "demo.yaml"), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("facetransfer: error: Keras backend tensorflow needs tensorflow, which is not installed")
    assert "use .venv (make venv)" in proc.stderr and "KERAS_BACKEND=jax needs .venv-jax (make venv-jax)" in proc.stderr
