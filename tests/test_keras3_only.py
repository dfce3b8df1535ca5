"""Model, training, feature, evaluation, feeder and saliency code uses the Keras 3 API only:
no ``import tensorflow`` / ``from tensorflow ...`` anywhere in those files (runtime.py is the
one module allowed to import the active backend, inside functions)."""

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "facetransfer"
KERAS_ONLY = ["train.py", "features.py", "evaluate.py", "saliency.py", "feeder.py"]


def tensorflow_imports(source: str) -> list[int]:
    """Line numbers of every import of tensorflow (or a tensorflow submodule)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "tensorflow" or name.startswith("tensorflow.") for name in names):
            lines.append(node.lineno)
    return lines


def keras_only_files() -> list[Path]:
    files = sorted((LIB / "models").glob("*.py")) + [LIB / name for name in KERAS_ONLY]
    return [f for f in files if f.exists()]


def test_detector_finds_every_spelling():
    assert tensorflow_imports("import tensorflow as tf") == [1]
    assert tensorflow_imports("x = 1\nfrom tensorflow import keras") == [2]
    assert tensorflow_imports("def f():\n    import tensorflow.experimental.numpy as tnp") == [2]
    assert tensorflow_imports("import os, tensorflow") == [1]
    assert tensorflow_imports("import keras\nfrom keras import ops\nimport tensorflow_datasets") == []


def test_the_models_package_is_checked():
    names = {f.name for f in keras_only_files()}
    assert {"__init__.py", "backbones.py", "heads.py", "strategies.py", "layers.py", "features.py"} <= names


@pytest.mark.parametrize("path", keras_only_files(), ids=lambda p: str(p.relative_to(LIB)))
def test_no_tensorflow_import(path):
    lines = tensorflow_imports(path.read_text(encoding="utf-8"))
    assert not lines, f"{path.relative_to(LIB)} imports tensorflow on line(s) {lines}; use keras / keras.ops"


def test_runtime_imports_tensorflow_only_inside_functions():
    tree = ast.parse((LIB / "runtime.py").read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not tensorflow_imports(ast.unparse(ast.Module(body=top_level, type_ignores=[])))
