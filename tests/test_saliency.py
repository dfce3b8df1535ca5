import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from facetransfer import saliency
from facetransfer.errors import FacetransferError

SIDE = 16
HALF = SIDE // 2


def quadrant_model(units: int = 1, name: str = "gender") -> keras.Model:
    """Output depends only on the top-left quadrant's mean brightness (fixed weights)."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Cropping2D(((0, HALF), (0, HALF)))(inputs)  # keep rows/cols 0..7
    x = keras.layers.GlobalAveragePooling2D()(x)
    if units == 1:
        out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(0.01),
                                 bias_initializer=keras.initializers.Constant(-3.0))(x)
    else:
        kernel = np.zeros((3, units), dtype="float32")
        kernel[:, 1] = 0.01  # class 1 grows with brightness, the others do not
        out = keras.layers.Dense(units, activation="softmax", kernel_initializer=keras.initializers.Constant(kernel))(x)
    return keras.Model(inputs, {name: out})


@pytest.fixture(scope="module")
def model():
    return quadrant_model()


def quadrant_means(heat):
    return {
        "tl": heat[:HALF, :HALF].mean(), "tr": heat[:HALF, HALF:].mean(),
        "bl": heat[HALF:, :HALF].mean(), "br": heat[HALF:, HALF:].mean(),
    }


def test_map_peaks_on_the_quadrant_the_model_reads(model):
    image = np.full((SIDE, SIDE, 3), 230, np.uint8)  # bright: P(male) high, predicted male
    heat = saliency.occlusion_map(model, image, patch=4, stride=2, baseline="zero")
    assert heat.shape == (SIDE, SIDE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    means = quadrant_means(heat)
    assert means["tl"] > 0.5 and means["tl"] == max(means.values())
    # patches wholly outside the read quadrant change nothing
    assert heat[HALF + 2:, :].max() == 0.0 and heat[:, HALF + 2:].max() == 0.0
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert peak[0] < HALF and peak[1] < HALF


def test_default_target_is_the_predicted_class(model):
    image = np.zeros((SIDE, SIDE, 3), np.uint8)  # dark: P(male) low, predicted female
    p_male = float(np.asarray(model.predict_on_batch(image[None].astype("float32"))["gender"])[0, 0])
    assert p_male < 0.5
    # occluding with white raises P(male), i.e. lowers P(female), only in the top-left
    heat = saliency.occlusion_map(model, image, patch=4, stride=4, baseline=255)
    assert quadrant_means(heat)["tl"] == pytest.approx(1.0)
    assert heat[HALF:, :].max() == 0.0
    # asking for the male class instead: occlusion only helps it, so nothing is shown
    assert saliency.occlusion_map(model, image, target=1, patch=4, stride=4, baseline=255).max() == 0.0


def test_softmax_output_and_uneven_grid():
    model = quadrant_model(units=3, name="age_group")
    image = np.full((SIDE, SIDE, 3), 200.0, np.float32)
    heat = saliency.occlusion_map(model, image, output="age_group", target=1, patch=5, stride=3, baseline="zero", batch_size=4)
    assert heat[:HALF, :HALF].mean() > heat[HALF + 2:, HALF + 2:].mean()
    assert heat[SIDE - 1, : HALF - 1].max() == 0.0  # the last row of patches is flush with the edge
    raw = saliency.occlusion_map(model, image, output="age_group", target=1, patch=5, stride=3, baseline="zero", normalize=False)
    assert 0.0 < raw.max() < 1.0


def test_bad_arguments_are_user_errors(model):
    image = np.full((SIDE, SIDE, 3), 100.0, np.float32)
    with pytest.raises(FacetransferError, match="outputs: gender"):
        saliency.occlusion_map(model, image, output="age")
    with pytest.raises(FacetransferError, match="baseline='blur'"):
        saliency.occlusion_map(model, image, baseline="blur")
    with pytest.raises(FacetransferError, match="patch=40"):
        saliency.occlusion_map(model, image, patch=40)
    with pytest.raises(FacetransferError, match="target=2"):
        saliency.occlusion_map(model, image, target=2)
    with pytest.raises(FacetransferError, match="0..255"):
        saliency.occlusion_map(model, image * 3.0)


def test_overlay():
    image = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3)).astype(np.uint8)
    heat = np.zeros((SIDE, SIDE), np.float32)
    heat[:4, :4] = 1.0
    out = saliency.overlay(image, heat)
    assert out.shape == (SIDE, SIDE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(saliency.overlay(image, heat, alpha=0.0), image)
    small = saliency.overlay(image, heat[::2, ::2])  # resized to the image
    assert small.shape == (SIDE, SIDE, 3)
    with pytest.raises(FacetransferError, match="heat"):
        saliency.overlay(image, heat * 3)


def test_saliency_uses_no_backend_import():
    tree = ast.parse(Path(saliency.__file__).read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not modules & {"tensorflow", "jax", "torch"}
