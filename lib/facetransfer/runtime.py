"""Runtime set-up: seeds, determinism, CPU threads, mixed precision, devices.

The ONE module allowed to import a backend framework, and only the active one
(``keras.backend.backend()``): TensorFlow for op determinism and its device list, JAX or
PyTorch for theirs. Everything else uses the Keras 3 API only.

XLA is not switched on here: :func:`configure` validates and reports the flag, and the
training code passes it to ``model.compile(jit_compile=...)``.
"""

from __future__ import annotations

import os
import random

import keras

from facetransfer.errors import ParamError
from facetransfer.io import cores

MIXED_PRECISION = ("auto", "on", "off")


def configure(seed: int, *, mixed_precision: str = "auto", xla: bool = False, cpu_threads: int | None = None) -> dict:
    """Seed Python, NumPy and the backend; make TensorFlow ops deterministic; set the CPU
    threads and the dtype policy. Call before building a model. Returns ``{backend, devices,
    cpu_threads, mixed_precision, xla}`` where ``cpu_threads`` is the backend's intra-op
    thread count, ``mixed_precision`` the policy set (``mixed_float16`` or ``float32``) and
    ``xla`` whether training is XLA-compiled (always under JAX; see :func:`jit_compile`).

    ``mixed_precision``: ``auto`` = on when a GPU is present, ``on``, ``off``.
    ``cpu_threads``: see :func:`set_cpu_threads`.
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ParamError("train.mixed_precision", f"{mixed_precision!r} is not allowed; allowed: {', '.join(MIXED_PRECISION)}")
    if not isinstance(xla, bool):
        raise ParamError("train.xla", f"{xla!r} is not true or false")
    backend = keras.backend.backend()
    threads = set_cpu_threads(cpu_threads)
    keras.utils.set_random_seed(int(seed))
    private_default_seeds(int(seed))
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    found = devices()
    policy = dtype_policy(mixed_precision, found)
    keras.config.set_dtype_policy(policy)
    return {"backend": backend, "devices": found, "cpu_threads": threads, "mixed_precision": policy, "xla": xla or backend == "jax"}


def private_default_seeds(seed: int) -> None:
    """Keras gives every layer and initializer built without a seed one drawn from Python's
    global ``random``; a Dask worker's own threads draw from it too, so a model built there
    got other initial weights from run to run. Keras has no public setting for this: Keras's
    draws go to a private generator seeded like the global one (the same draws serially)."""
    from keras.src.random import seed_generator

    seed_generator.python_random = random.Random(seed)


def set_cpu_threads(cpu_threads: int | None) -> int:
    """Give the backend's CPU kernels ``cpu_threads`` intra-op threads; returns the count in use.

    A CPU kernel's float sums depend on how many threads split them (TensorFlow's Eigen and
    oneDNN kernels choose their blocking by the thread count): the same seed gives the same
    numbers only with the same count. ``None`` keeps the backend's default: every core, or
    the share a Dask worker sets in ``TF_NUM_INTRAOP_THREADS``/``OMP_NUM_THREADS``. TensorFlow
    fixes its count when it runs its first op: a different count afterwards is an error.
    JAX's XLA takes every core (the same serially and on Dask) and has no setting here.
    """
    if cpu_threads is not None and (isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int) or cpu_threads < 1):
        raise ParamError("train.cpu_threads", f"{cpu_threads!r} is not allowed; allowed: an integer >= 1 or null")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        current = tf.config.threading.get_intra_op_parallelism_threads()
        if cpu_threads is not None and cpu_threads != current:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            except RuntimeError:
                raise ParamError(
                    "train.cpu_threads", f"{cpu_threads} cannot be set: TensorFlow in this process already runs with {current or 'its default'} threads"
                ) from None
            current = cpu_threads
        return current or int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or cores()
    if backend == "torch":
        import torch

        if cpu_threads is not None:
            torch.set_num_threads(cpu_threads)
        return torch.get_num_threads()
    if cpu_threads is not None:
        raise ParamError("train.cpu_threads", f"{cpu_threads} is not allowed on {backend}: its XLA uses every core; allowed there: null")
    return cores()


def dtype_policy(mixed_precision: str, found: list[str] | None = None) -> str:
    """``mixed_float16`` when ``mixed_precision`` is ``on``, or ``auto`` with a GPU; else ``float32``."""
    if mixed_precision not in MIXED_PRECISION:
        raise ParamError("train.mixed_precision", f"{mixed_precision!r} is not allowed; allowed: {', '.join(MIXED_PRECISION)}")
    use_mixed = mixed_precision == "on" or (mixed_precision == "auto" and has_gpu(found))
    return "mixed_float16" if use_mixed else "float32"


def jit_compile(xla: bool):
    """``model.compile(jit_compile=...)`` for ``train.xla``.

    ``xla: true`` compiles with XLA on every backend. ``false`` keeps TensorFlow's graph
    without XLA, but gives JAX Keras' ``"auto"``: JAX always runs through XLA, and without
    ``jax.jit`` every op would be dispatched (and compiled) one at a time.
    """
    if xla:
        return True
    return "auto" if keras.backend.backend() == "jax" else False


def native_bfloat16() -> bool:
    """True on a GPU or a CPU with bfloat16 arithmetic (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo)."""
    if has_gpu():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_gpu(found: list[str] | None = None) -> bool:
    found = devices() if found is None else found
    return any(d.lower().startswith(("gpu", "cuda")) for d in found)


def devices() -> list[str]:
    """Devices of the active backend, e.g. ``["CPU:0", "GPU:0"]`` (TensorFlow),
    ``["cpu:0"]`` (JAX), ``["cpu", "cuda:0"]`` (PyTorch)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name.removeprefix("/physical_device:") for d in tf.config.list_physical_devices()]
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if backend == "torch":
        import torch

        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]
