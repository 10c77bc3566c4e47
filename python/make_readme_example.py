"""The README's picture: the example 16x16 faces, and what `pulse_ext.upscale` makes of them.

    python python/make_readme_example.py [--generator default] [--seed 0] [--out docs/figures/readme-example.png]

One row per input: the input (nearest-neighbour enlarged to the output size, as a viewer would show it),
the original it was downscaled from (never seen by the search), then four distinct PULSE outputs
(upscale()'s defaults: 8 restarts, up to 200 steps), each with its downscale L2 (* = met eps).

By default two rows: examples/astronaut16.png (aligned like the default generator's training data) and
examples/astronaut-ffhq16.png (the same photo cut FFHQ-style, as an unaligned tiny face comes). With
--input, one row of that image (--original: its high-resolution face, or 'none').
"""
from __future__ import annotations

import argparse
import os

from PIL import Image, ImageDraw

import pulse_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DEFAULT_ROWS = [  # (input, original, what the row is)
    (os.path.join(EXAMPLES, "astronaut16.png"), os.path.join(EXAMPLES, "astronaut64.png"), "aligned"),
    (os.path.join(EXAMPLES, "astronaut-ffhq16.png"), os.path.join(EXAMPLES, "astronaut-ffhq64.png"), "FFHQ cut"),
]


def figure_row(input_path: str, original_path: str, title: str, generator: str, seed: int, scale: int):
    """(row image, L2 list) for one input: input | original | four outputs, labelled underneath."""
    low_res = Image.open(input_path).convert("RGB")
    result = pulse_ext.upscale(low_res, generator=generator, num_outputs=4, seed=seed, return_result=True)
    size = result.candidates[0].size[0]
    tiles = [low_res.resize((size, size), Image.NEAREST)]
    labels = [f"input {low_res.size[0]}x{low_res.size[1]}" + (f" {title}" if title else "")]
    if original_path != "none":
        tiles.append(Image.open(original_path).convert("RGB").resize((size, size), Image.LANCZOS))
        labels.append("original")
    tiles += list(result.candidates)
    labels += [f"L2 {l2:.4f}" + (" *" if ok else "") for l2, ok in zip(result.l2, result.converged)]
    cell = size * scale
    row = Image.new("RGB", (cell * len(tiles), cell + 14), "white")
    draw = ImageDraw.Draw(row)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        row.paste(tile.resize((cell, cell), Image.NEAREST), (i * cell, 0))
        draw.text((i * cell + 2, cell + 1), label, fill="black")
    return row, list(result.l2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="one input instead of the two examples")
    parser.add_argument("--original", default="none",
                        help="with --input: the high-resolution face it was made from, or 'none' (default)")
    parser.add_argument("--generator", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="enlarge the whole figure by this factor")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "readme-example.png"))
    args = parser.parse_args(argv)
    rows = DEFAULT_ROWS if args.input is None else [(args.input, args.original, "")]
    images = []
    for input_path, original_path, title in rows:
        row, l2 = figure_row(input_path, original_path, title, args.generator, args.seed, args.scale)
        images.append(row)
        print(f"{os.path.basename(input_path)}: L2 {', '.join(f'{v:.4f}' for v in l2)} (* = met eps 2e-3)")
    figure = Image.new("RGB", (max(r.width for r in images), sum(r.height for r in images)), "white")
    y = 0
    for row in images:
        figure.paste(row, (0, y))
        y += row.height
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
