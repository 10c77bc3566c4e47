"""The README's picture: the example 16x16 face, and what `pulse_ext.upscale` makes of it.

    python python/make_readme_example.py [--generator default] [--seed 0] [--out docs/figures/readme-example.png]

One row: the input (nearest-neighbour enlarged to the output size, as a viewer would show it), the
original it was downscaled from (never seen by the search; --original none leaves it out), then four
distinct PULSE outputs (upscale()'s defaults: 8 restarts, up to 200 steps), each with its downscale L2.
"""
from __future__ import annotations

import argparse
import os

from PIL import Image, ImageDraw

import pulse_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=os.path.join(ROOT, "examples", "astronaut16.png"))
    parser.add_argument("--original", default=None,
                        help="the high-resolution face the input was made from, or 'none' (default: "
                             "examples/astronaut64.png for the default input, else none)")
    parser.add_argument("--generator", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="enlarge the whole figure by this factor")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "readme-example.png"))
    args = parser.parse_args(argv)
    if args.original is None:
        default_input = os.path.join(ROOT, "examples", "astronaut16.png")
        same = os.path.abspath(args.input) == os.path.abspath(default_input)
        args.original = os.path.join(ROOT, "examples", "astronaut64.png") if same else "none"
    low_res = Image.open(args.input).convert("RGB")
    result = pulse_ext.upscale(low_res, generator=args.generator, num_outputs=4, seed=args.seed, return_result=True)
    size = result.candidates[0].size[0]
    tiles = [low_res.resize((size, size), Image.NEAREST)]
    labels = [f"input {low_res.size[0]}x{low_res.size[1]}"]
    if args.original != "none":
        original = Image.open(args.original).convert("RGB")
        tiles.append(original.resize((size, size), Image.LANCZOS))
        labels.append("original")
    tiles += list(result.candidates)
    labels += [f"L2 {l2:.4f}" + (" *" if ok else "") for l2, ok in zip(result.l2, result.converged)]
    cell = size * args.scale
    figure = Image.new("RGB", (cell * len(tiles), cell + 14), "white")
    draw = ImageDraw.Draw(figure)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        figure.paste(tile.resize((cell, cell), Image.NEAREST), (i * cell, 0))
        draw.text((i * cell + 2, cell + 1), label, fill="black")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out} (L2 {', '.join(f'{v:.4f}' for v in result.l2)}; * = met eps {2e-3})")


if __name__ == "__main__":
    main()
