"""Command line: ``facetransfer synth | data summary | run | report | bench``.

Heavy modules (Keras, papermill) are imported inside the handlers, so ``--help`` and
argument errors answer at once. Every :class:`FacetransferError` is printed as one line,
``facetransfer: error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from facetransfer import __version__
from facetransfer.errors import FacetransferError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``facetransfer <cmd>: error: ... (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _cmd_synth(args: argparse.Namespace) -> int:
    from facetransfer import synthetic

    info = synthetic.generate(args.layout, args.out, n=args.n, seed=args.seed, size=args.size, overwrite=args.overwrite)
    print(json.dumps(info) if args.json else f"wrote {info['n']} SYNTHETIC {args.layout}-layout faces to {info['root']} in {info['seconds']:.1f} s")
    return 0


def _cmd_data_summary(args: argparse.Namespace) -> int:
    from facetransfer import datasets

    folder = None
    if args.folder:
        folder = {}
        for item in args.folder:
            key, sep, value = item.partition("=")
            if not sep:
                raise FacetransferError(f"--folder {item!r}: expected key=value (keys: csv, path_column, gender_column, ...)")
            folder[key] = value
    ds = datasets.load(args.dataset, args.root, folder=folder, frontal=args.frontal)
    if not args.fast:
        ds = datasets.check_decodes(ds)
    summary = datasets.summary(ds)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(datasets.format_summary(summary))
    return 0


# The environment (and its make target) that provides each Keras backend.
_BACKEND_ENVS = {"tensorflow": ".venv (make venv)", "jax": ".venv-jax (make venv-jax)", "torch": "an environment with torch"}


def _missing_backend(module: str) -> str:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow (the default)")
    others = "; ".join(f"KERAS_BACKEND={name} needs {env}" for name, env in _BACKEND_ENVS.items() if name != module)
    return (
        f"Keras backend {backend} needs {module}, which is not installed in {sys.prefix}; "
        f"use {_BACKEND_ENVS[module]}, or set KERAS_BACKEND to an installed backend ({others})"
    )


def _import_keras_quietly() -> None:
    """Import Keras with file descriptor 2 silenced.

    TensorFlow 2.21 writes its start-up lines (absl, oneDNN, CUDA probing) straight to
    fd 2 while it is imported, where no log level reaches them; they would bury our own
    one-line messages. An import error still raises after stderr is restored.
    """
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    except ModuleNotFoundError as exc:
        module = (exc.name or "").split(".")[0]
        if module not in _BACKEND_ENVS:
            raise
        raise FacetransferError(_missing_backend(module)) from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cmd_run(args: argparse.Namespace) -> int:
    _import_keras_quietly()
    from facetransfer import runner

    return runner.run_study(
        args.study,
        force=args.force,
        dry_run=args.dry_run,
        overrides=args.set or [],
        results=args.results,
        report=not args.no_report,
        workers=args.workers,
        scheduler=args.scheduler,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from facetransfer import report

    index = report.render(args.study_dir)
    print(f"report: {index}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    _import_keras_quietly()
    from facetransfer import bench

    if args.study is not None:
        return bench.run_study_bench(args.study, args.workers or "1,2", overrides=args.set or [], as_json=args.json, workdir=args.workdir)
    if args.workers is not None or args.set:
        raise FacetransferError("--workers and --set go with --study (the study bench)")
    return bench.run_bench(quick=args.quick, as_json=args.json, cases=args.cases, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="facetransfer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"facetransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("synth", help="write a SYNTHETIC face set in a real dataset layout")
    p.add_argument("--layout", required=True, choices=["celeba", "utkface"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", required=True, type=_positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in px (32..512, default 128)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("data", help="inspect a dataset")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    s = dsub.add_parser("summary", help="counts, labels and skipped inputs of a dataset")
    s.add_argument("--dataset", required=True, choices=["celeba", "celeba30k", "utkface", "adience", "folder"])
    s.add_argument("--root", required=True, type=Path)
    s.add_argument("--folder", action="append", metavar="KEY=VALUE", help="folder dataset spec (csv=, path_column=, gender_column=, ...)")
    folds = s.add_mutually_exclusive_group()
    folds.add_argument("--frontal", dest="frontal", action="store_const", const=True, default=None, help="adience: read fold_frontal_*_data.txt (an error when missing)")
    folds.add_argument("--all-folds", dest="frontal", action="store_const", const=False, help="adience: read fold_*_data.txt (default: fold_frontal_* when present, else fold_*)")
    s.add_argument("--fast", action="store_true", help="check each file's first bytes only; by default every image is decoded as a run decodes it")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_data_summary)

    p = sub.add_parser("run", help="execute a study (params/<study>.yaml)")
    p.add_argument("study", type=Path)
    p.add_argument("--force", action="store_true", help="re-run runs that are already complete")
    p.add_argument("--dry-run", action="store_true", help="print the resolved runs as JSON lines; execute nothing")
    p.add_argument("--set", action="append", metavar="DOTTED.KEY=VALUE", help="override a param (value parsed as YAML); repeatable")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: results/)")
    p.add_argument("--no-report", action="store_true", help="do not render the HTML report at the end")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="run on a local Dask cluster of N worker processes")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on the Dask cluster of this scheduler (tcp://host:8786)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="(re)render the HTML report of a study")
    p.add_argument("study_dir", type=Path, help="results/<study>")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", help="benchmark facetransfer's pipeline against the seed-style pipeline")
    p.add_argument("--quick", action="store_true", help="small sizes; finishes in about 3 minutes on 2 cores")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cases", nargs="*", default=None, help="subset of cases to run (default: all)")
    p.add_argument("--workdir", type=Path, default=None, help="where the benchmark data and caches go")
    p.add_argument("--study", type=Path, default=None, help="instead: time this study serially and on Dask workers")
    p.add_argument("--workers", default=None, metavar="N,N", help="with --study: worker counts to compare with serial (default 1,2)")
    p.add_argument("--set", action="append", metavar="DOTTED.KEY=VALUE", help="with --study: override a param, as for run")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter hides our own output; papermill kernels inherit this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FacetransferError as exc:
        print(f"facetransfer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facetransfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
