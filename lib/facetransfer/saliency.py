"""Where does the model look? Occlusion sensitivity maps.

Grad-CAM needs gradients, and gradients are backend-specific (``tf.GradientTape``,
``jax.grad``, ``torch.autograd``). Occlusion sensitivity needs only forward passes, so
it works unchanged on every Keras 3 backend: slide a grey (or mean-colour) patch over
the image, and record how much the probability of the target class drops when each
region is hidden. Regions whose occlusion hurts the prediction most are the regions the
model relies on.

Keras 3 API only (no backend import).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm  # text bars: readable in papermill output and the HTML report

from facetransfer.errors import FacetransferError

BASELINES = ("mean", "zero", "gray")
FLOAT_NOISE = 1e-6  # probability drops below this are float32 rounding between batch shapes


def _check_image(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise FacetransferError(f"image must be (height, width, 3) or (height, width); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise FacetransferError("image must hold finite numbers (pixel values 0..255)")
    if arr.min() < 0 or arr.max() > 255:
        raise FacetransferError(f"image pixel values must lie in 0..255; got {arr.min():.4g}..{arr.max():.4g}")
    return arr


def _fill_value(image: np.ndarray, baseline) -> np.ndarray:
    if isinstance(baseline, str):
        if baseline == "mean":
            return image.reshape(-1, image.shape[-1]).mean(axis=0)
        if baseline == "zero":
            return np.zeros(image.shape[-1])
        if baseline == "gray":
            return np.full(image.shape[-1], 127.5)
        raise FacetransferError(f"baseline={baseline!r} is not allowed; allowed: {', '.join(BASELINES)}, or a number 0..255")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, np.number)) or not 0 <= baseline <= 255:
        raise FacetransferError(f"baseline={baseline!r} is not allowed; allowed: {', '.join(BASELINES)}, or a number 0..255")
    return np.full(image.shape[-1], float(baseline))


def _positions(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts covering [0, length): every ``stride`` px, plus one flush with the end."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def _check_size(name: str, value, default: int, limit: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= limit:
        raise FacetransferError(f"{name}={value!r} must be an integer between 1 and {limit} (the image side)")
    return int(value)


def _predict_output(model, batch: np.ndarray, output: str) -> np.ndarray:
    """Model probabilities for ``output`` as (batch, classes); a sigmoid output (1 unit)
    becomes two columns [1 - p, p] so class 1 (male) is column 1."""
    result = model.predict_on_batch(batch)
    if isinstance(result, dict):
        if output not in result:
            raise FacetransferError(f"output={output!r} is not an output of the model; outputs: {', '.join(sorted(result))}")
        result = result[output]
    elif isinstance(result, (list, tuple)):
        raise FacetransferError("the model has several unnamed outputs; build it with dict outputs (gender, age, age_group)")
    probs = np.asarray(result, dtype=np.float64).reshape(len(batch), -1)
    if probs.shape[1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def occlusion_map(
    model,
    image,
    *,
    output: str = "gender",
    target: int | None = None,
    patch: int | None = None,
    stride: int | None = None,
    baseline="mean",
    batch_size: int = 64,
    normalize: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Occlusion sensitivity of ``model``'s ``output`` for one ``image``.

    ``image``: (H, W, 3) pixels 0..255, as the model's input takes them. A ``patch`` x
    ``patch`` square (default: side // 8) filled with ``baseline`` ("mean": the image's
    mean colour, "zero", "gray", or a number 0..255) slides with ``stride`` (default:
    patch // 2). For each position we record the drop of P(``target``) against the
    un-occluded image; ``target`` defaults to the class the model predicts for the image
    (for a sigmoid output: 1 = male if P >= 0.5, else 0 = female). Each pixel gets the
    mean drop over the patches that cover it.

    Returns an (H, W) float32 map. Increases of P(target) count as 0 (we show what the
    prediction relies on). With ``normalize`` the map is divided by its maximum, so it
    lies in [0, 1]; a map that is all 0 means no occlusion lowered P(target).
    """
    img = _check_image(image)
    height, width = img.shape[:2]
    side = min(height, width)
    patch = _check_size("patch", patch, max(1, side // 8), side)
    stride = _check_size("stride", stride, max(1, patch // 2), side)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise FacetransferError(f"batch_size={batch_size!r} must be an integer >= 1")
    fill = _fill_value(img, baseline).astype(np.float32)
    base = img.astype(np.float32)

    base_probs = _predict_output(model, base[None], output)[0]
    n_classes = base_probs.shape[0]
    if target is None:
        target = int(np.argmax(base_probs))
    elif isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < n_classes:
        raise FacetransferError(f"target={target!r} must be a class index 0..{n_classes - 1} of output {output!r}")
    reference = base_probs[target]

    boxes = [(y, x) for y in _positions(height, patch, stride) for x in _positions(width, patch, stride)]
    drop_sum = np.zeros((height, width), dtype=np.float64)
    cover = np.zeros((height, width), dtype=np.float64)
    chunks = range(0, len(boxes), batch_size)
    for start in tqdm(chunks, desc="occlusion", disable=not progress):
        chunk = boxes[start : start + batch_size]
        batch = np.repeat(base[None], len(chunk), axis=0)
        for i, (y, x) in enumerate(chunk):
            batch[i, y : y + patch, x : x + patch, :] = fill
        probs = _predict_output(model, batch, output)[:, target]
        for (y, x), p in zip(chunk, probs, strict=True):
            drop_sum[y : y + patch, x : x + patch] += reference - p
            cover[y : y + patch, x : x + patch] += 1.0
    heat = np.clip(drop_sum / cover, 0.0, None)
    # a batch is computed by other kernels than the single image: drops at float32 rounding level are not saliency
    heat[heat < FLOAT_NOISE] = 0.0
    if normalize and heat.max() > 0:
        heat = heat / heat.max()
    return heat.astype(np.float32)


def overlay(image, heat, *, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (values in [0, 1]) onto ``image`` (pixels 0..255) → RGB uint8.

    A heat map of another size is resized (bilinear) to the image's size.
    """
    import matplotlib

    img = _check_image(image)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or not np.all(np.isfinite(heat)) or heat.min() < 0 or heat.max() > 1:
        raise FacetransferError("heat must be a 2-D map with values in [0, 1] (as occlusion_map returns)")
    if not 0.0 <= alpha <= 1.0:
        raise FacetransferError(f"alpha={alpha!r} must lie in [0, 1]")
    if heat.shape != img.shape[:2]:
        from PIL import Image

        heat = np.asarray(Image.fromarray(heat).resize((img.shape[1], img.shape[0]), Image.BILINEAR))
        heat = np.clip(heat, 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * img.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
