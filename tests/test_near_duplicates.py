"""Near duplicates on an image-level set where copies were PLANTED: found, counted across the
split, kept on one side with ``data.split.near_duplicates: group``; hashes stored once."""

import html
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facetransfer import data, near_duplicates, synthetic
from facetransfer.errors import ParamError
from facetransfer.params import resolve_run
from facetransfer.splits import check_leakage

N_FACES = 160
N_PLANTED = 24


def _copy_name(name: str, k: int) -> str:
    """A UTKFace name for the copy: same labels, another date&time field."""
    age, gender, race, rest = name.split("_", 3)
    stamp, tail = rest.split(".", 1)
    return f"{age}_{gender}_{race}_{stamp}{k:03d}.{tail}"


def _planted_copy(original: Image.Image, kind: int) -> Image.Image:
    """Kind 0: re-encoded at JPEG quality 60; 1: resized to 90 %; 2: both, at 85 % and quality 50."""
    if kind == 1:
        return original.resize((round(original.width * 0.9), round(original.height * 0.9)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image = original if kind == 0 else original.resize((round(original.width * 0.85), round(original.height * 0.85)))
    image.save(buffer, "JPEG", quality=60 if kind == 0 else 50)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A synthetic UTKFace-layout set (no identities) plus N_PLANTED altered copies: {copy: original}."""
    root = tmp_path_factory.mktemp("utk") / "set"
    synthetic.generate("utkface", root, n=N_FACES, seed=3, size=128, workers=1, progress=False)
    originals = sorted(root.rglob("*.jpg"))[:N_PLANTED]
    pairs = {}
    for k, original in enumerate(originals):
        copy = original.with_name(_copy_name(original.name, k))
        _planted_copy(Image.open(original).convert("RGB"), k % 3).save(copy, quality=95)
        pairs[str(copy)] = str(original)
    return root, pairs


def _cfg(root, mode="count", **split):
    return {"seed": 0, "task": "gender", "data": {"dataset": "utkface", "root": str(root), "image_size": 32, "split": {"near_duplicates": mode, **split}},
            "model": {"backbone": "compact", "weights": "none", "strategy": "full"}}


def test_planted_copies_are_found_counted_and_grouped(planted, tmp_path):
    root, pairs = planted
    counted = data.prepare(_cfg(root), tmp_path, progress=False)
    recs = counted.records.set_index("path")
    found = counted.near_duplicates
    crossing = counted.near_duplicates_crossing()
    print(f"planted {len(pairs)} copies among {len(recs)} images: {found['n_clusters']} clusters of {found['n_images']} images found, "
          f"{len(crossing)} on two sides of the split ({found['method']})")
    assert all(recs.loc[copy, "near_duplicate"] == recs.loc[original, "near_duplicate"] for copy, original in pairs.items())
    assert recs["near_duplicate"].notna().sum() == 2 * len(pairs) and found["n_clusters"] == len(pairs)  # no false match
    cut = sum(recs.loc[copy, "split"] != recs.loc[original, "split"] for copy, original in pairs.items())
    assert len(crossing) == cut > 0 and set(crossing.columns) == {"cluster", "n_images", "splits", "paths"}
    prov = counted.provenance()
    assert prov["split_kind"] == "image-level (this dataset has no identities)"
    assert prov["near_duplicates"]["n_crossing"] == cut and len(prov["near_duplicates"]["crossing"]) == cut
    assert counted.near_duplicates_summary().startswith(f"near duplicates: {len(pairs)} clusters of {2 * len(pairs)} images, {cut} of them on two sides")

    grouped = data.prepare(_cfg(root, "group"), tmp_path, progress=False)
    assert grouped.near_duplicates_crossing().empty
    check_leakage(grouped.records, grouped.records["split"], grouped.records["near_duplicate"])
    assert grouped.split_kind() == f"image-level (this dataset has no identities); {len(pairs)} near-duplicate clusters kept on one side"
    assert grouped.near_duplicates["hash_cache_hit"] is True  # hashed once for the study, read back after
    print("with group:", grouped.near_duplicates_summary())


def test_hashes_come_from_a_fixed_size_cache_whatever_the_input_size(planted, tmp_path):
    root, pairs = planted
    small = data.prepare(_cfg(root), tmp_path, progress=False)
    large = data.prepare({**_cfg(root), "data": {**_cfg(root)["data"], "image_size": near_duplicates.HASH_PX}}, tmp_path, progress=False)
    assert large.cache.key != small.cache.key and large.near_duplicates["decode_cache_hit"] is True  # the run's own cache was reused
    pd.testing.assert_series_equal(small.records["near_duplicate"], large.records["near_duplicate"])


def test_a_set_without_near_duplicates_says_none(tmp_path):
    root = tmp_path / "utk"
    synthetic.generate("utkface", root, n=30, seed=4, size=64, workers=1, progress=False)
    prepared = data.prepare(_cfg(root), tmp_path, progress=False)
    assert prepared.near_duplicates_summary().startswith("near duplicates: none among the 30 images; perceptual hash")
    assert prepared.near_duplicates_crossing().empty


def test_find_pairs_matches_a_direct_count():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(300, 4), dtype=np.uint64)
    hashes[7] = hashes[3] ^ np.array([0b111, 0, 0, 1 << 40], dtype=np.uint64)  # 4 bits apart
    hashes[9] = ~hashes[3]  # 256 bits apart: must not wrap around to 0 in the fast uint8 count
    pairs = near_duplicates.find_pairs(hashes, max_distance=10)
    bits = np.unpackbits(hashes.view(np.uint8), axis=1)
    direct = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(direct <= 10, k=1))
    assert sorted(map(tuple, pairs[:, :2].tolist())) == sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(3, 7)]
    assert pairs[0, 2] == 4


def test_group_on_a_fixed_split_is_one_line():
    with pytest.raises(ParamError, match=re.escape("data.split.near_duplicates: 'group' needs data.split.source random: the folds split's test side is fixed by the dataset; allowed here: count")):
        resolve_run({"data": {"dataset": "adience", "root": "/x", "split": {"source": "folds", "near_duplicates": "group"}}})
    with pytest.raises(ParamError, match=r"data.split.near_duplicates: 'yes' is not allowed; allowed: one of count, group"):
        resolve_run({"data": {"root": "/x", "split": {"near_duplicates": "yes"}}})


def test_explore_table_and_report_say_what_the_split_is(planted, tmp_path):
    from facetransfer import plots, report

    root, pairs = planted
    counted = data.prepare(_cfg(root), tmp_path, progress=False)
    crossing = counted.near_duplicates_crossing()
    page = plots.near_duplicates_table(counted).to_html()
    assert "Split: image-level (this dataset has no identities). Near duplicates: 24 clusters of 48 images" in page
    assert all(path.split(" (")[0] in page for path in crossing["paths"].iloc[0].split("; "))
    shown = plots.provenance_table(counted.provenance()).to_html()
    assert html.escape(counted.near_duplicates_summary()) in shown and "crossing" not in shown  # the line, not the JSON

    prov = counted.provenance()
    cell = report._provenance_section([{"metrics": {"data": {"provenance": prov}}}])
    assert "split kind" in cell and "image-level (this dataset has no identities)" in cell
    assert f"{len(crossing)} of them on two sides of the split" in cell and cell.count("<li>") == min(len(crossing), report.NEAR_DUPLICATES_SHOWN)
    old = {key: value for key, value in prov.items() if key not in ("split_kind", "near_duplicates")}
    assert "not recorded" in report._provenance_section([{"metrics": {"data": {"provenance": old}}}])
