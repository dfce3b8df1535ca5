"""glibc malloc tuning for TensorFlow CPU training (a benchmark, not a test).

Trains one run of the demo study (default: ``scratch`` on 300 SYNTHETIC images, the compact
CNN at 48 px, one CPU thread, 8 epochs) in a fresh child process, alternately without and
with the Makefile's ``GLIBC_TUNABLES`` (``--repeats`` times each, side by side in one run),
and prints each child's wall, user and system seconds, its minor page faults and the
run's test metric, then the median ratios. The test metric must be the same
in every child: malloc decides where tensors live, never what they hold.

The first child also generates the synthetic faces and the decoded-image cache under
``--workdir``; that warm-up is not counted.

    .venv/bin/python benchmarks/malloc.py [--run "scratch train_size=300"] [--repeats 2]

About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The Makefile's value (one home: read from there, so the benchmark measures what ships).
MAKEFILE_PREFIX = "export GLIBC_TUNABLES ?= "

CHILD = """
import json, sys, time
from pathlib import Path
from facetransfer import study, train
name, results = sys.argv[1], Path(sys.argv[2])
demo = study.load_study(Path(sys.argv[3]))
run = next(r for r in demo.runs if r.name == name)
start = time.perf_counter()
metrics = train.run_config(run.params, results / "runs" / f"{run.run_id}-{time.time_ns()}", results_root=results, run_id=run.run_id, verbose=0)
test = metrics["test"]
print(json.dumps({"run_seconds": time.perf_counter() - start, "test": test.get("accuracy", test.get("mae"))}))
"""


def makefile_tunables() -> str:
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(MAKEFILE_PREFIX):
            return line.removeprefix(MAKEFILE_PREFIX).strip()
    raise ValueError(f"Makefile: no line starting with {MAKEFILE_PREFIX!r}")


def child(run: str, workdir: Path, tunables: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, run, str(workdir), str(REPO / "params" / "demo.yaml")],
        capture_output=True, text=True, env=env, check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "tunables": tunables or "(glibc defaults)",
        "wall": wall,
        "run": result["run_seconds"],
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "test": result["test"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="scratch train_size=300", help="a run name of params/demo.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    tunables = makefile_tunables()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="facetransfer-malloc-"))
    print(f"warm-up (synthetic faces, image cache) in {workdir} ...", flush=True)
    child(args.run, workdir, None)
    rows = []
    for _ in range(args.repeats):
        for setting in (None, tunables):
            row = child(args.run, workdir, setting)
            rows.append(row)
            print(f"{row['tunables']:>60}  wall {row['wall']:6.1f} s  run {row['run']:6.1f} s  user {row['user']:6.1f} s  "
                  f"sys {row['sys']:5.1f} s  minor faults {row['minor_faults']:>9,}  test {row['test']:.6f}", flush=True)
    tests = {row["test"] for row in rows}
    if len(tests) != 1:
        raise SystemExit(f"the test metric differs between children: {sorted(tests)}")
    base = [row for row in rows if row["tunables"] == "(glibc defaults)"]
    tuned = [row for row in rows if row["tunables"] == tunables]
    for key in ("run", "user", "sys", "minor_faults"):
        ratio = statistics.median(t[key] for t in tuned) / statistics.median(b[key] for b in base)
        print(f"median {key:>12}: tuned / default = {ratio:.2f}")
    print(f"test metric identical in all {len(rows)} children: {tests.pop():.6f}")


if __name__ == "__main__":
    main()
