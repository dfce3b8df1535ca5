"""How fast is the SYNTHETIC face generator? (target: 2,000 images at 128 px in < 60 s on 2 cores)

    .venv/bin/python benchmarks/synth_speed.py [--n 2000] [--size 128] [--workers 2] [--layout celeba]

Prints one line per layout with images, seconds and images per second. Optionally writes a
captioned grid of the first faces (``--grid results/synthetic_grid.png``) to look at.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from facetransfer import synthetic

CAPTIONS = {
    "Male": "male", "Young": "young", "Smiling": "smile", "Eyeglasses": "glasses", "Bangs": "bangs",
    "Blond_Hair": "blond", "Black_Hair": "black", "Brown_Hair": "brown", "Gray_Hair": "gray",
    "Bald": "bald", "Wearing_Hat": "hat", "Heavy_Makeup": "makeup", "Wearing_Lipstick": "lipstick",
    "Wearing_Earrings": "earrings", "Mustache": "mustache", "Goatee": "goatee",
    "5_o_Clock_Shadow": "stubble", "Wearing_Necktie": "tie", "Receding_Hairline": "receding",
}  # fmt: skip


def celeba_grid(root: Path, out: Path, *, count: int = 48, columns: int = 8) -> Path:
    """A contact sheet of the first ``count`` faces of a synthetic CelebA set, with their labels."""
    lines = (root / "list_attr_celeba.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1 : count + 1]]
    first = Image.open(root / "img_align_celeba" / "img_align_celeba" / rows[0]["image_id"])
    w, h = first.size
    scale, caption = 2, 44
    sheet = Image.new("RGB", (columns * w * scale, -(-len(rows) // columns) * (h * scale + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % columns) * w * scale, (i // columns) * (h * scale + caption)
        face = Image.open(root / "img_align_celeba" / "img_align_celeba" / row["image_id"]).convert("RGB")
        sheet.paste(face.resize((w * scale, h * scale), Image.LANCZOS), (x, y))
        words = [("MALE" if row["Male"] == "1" else "FEMALE")]
        words += [label for key, label in CAPTIONS.items() if key != "Male" and row[key] == "1"]
        words += ["beard"] if row["No_Beard"] == "-1" else []
        text, line = [], ""
        for word in words:
            if len(line) + len(word) + 1 > 34:
                text.append(line)
                line = ""
            line = f"{line} {word}".strip()
        text.append(line)
        draw.multiline_text((x + 3, y + h * scale + 2), "\n".join(text[:3]), fill="black", spacing=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layout", choices=[*synthetic.LAYOUTS, "both"], default="both")
    parser.add_argument("--grid", type=Path, default=None, help="also write a captioned grid of 48 celeba faces here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    layouts = synthetic.LAYOUTS if args.layout == "both" else (args.layout,)
    with tempfile.TemporaryDirectory(prefix="synth-speed-") as work:
        for layout in layouts:
            info = synthetic.generate(layout, Path(work) / layout, n=args.n, seed=args.seed, size=args.size, workers=args.workers, progress=False)
            info["images_per_second"] = round(info["n"] / info["seconds"], 1)
            info["workers"] = args.workers
            if args.json:
                print(json.dumps(info))
            else:
                print(f"{layout:8s} {info['n']} images at {args.size} px, {args.workers} workers: {info['seconds']:.1f} s ({info['images_per_second']} img/s)")
            if args.grid and layout == "celeba":
                print(f"grid: {celeba_grid(Path(info['root']), args.grid)}")


if __name__ == "__main__":
    main()
