"""Cost of the search options for inputs the generator cannot match, side by side in one run.

    python benchmarks/bench_search_options.py [--generator default] [--repeats 2] [--threads 1]

Times ``upscale()`` on the README's example input (examples/astronaut16.png) with: the plain search,
the framing search, the intermediate-layer search (blocks 8 and 16, 50 steps each), and both; eps=0 so
that no restart stops early and every configuration runs all of its steps (the worst case: real inputs
that converge cost less). Each configuration runs --repeats times, interleaved, and the median is kept;
ratios are against the plain search of the same run. Writes benchmarks/results/search-options-cpu.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="default")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="default: upscale()'s")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "search-options-cpu.json"))
    args = ap.parse_args(argv)
    import torch

    from pulse_ext.checkpoints import load_generator
    from pulse_ext.upscale import DEFAULT_STEPS, upscale

    torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS
    G = load_generator(args.generator).eval()
    image = os.path.join(os.path.dirname(__file__), "..", "examples", "astronaut16.png")
    configs = {
        "plain": {},
        "framing_search": {"framing_search": True},
        "intermediate_8_16": {"intermediate_resolutions": (8, 16)},
        "framing_search+intermediate_8_16": {"framing_search": True, "intermediate_resolutions": (8, 16)},
    }
    upscale(image, generator=G, steps=2, seed=0, realism_check="off")  # warm-up (mapping fit, allocations)
    seconds = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, options in configs.items():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # eps=0: nothing converges, by design
                upscale(image, generator=G, steps=steps, eps=0.0, seed=0, realism_check="off", **options)
            seconds[name].append(time.perf_counter() - t)
            print(f"{name}: {seconds[name][-1]:.2f} s", file=sys.stderr)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    result = {
        "what": "upscale() on examples/astronaut16.png, 8 restarts, eps=0 (all steps run), seed 0",
        "generator": args.generator, "steps": steps, "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "note": "measured beside a training job (it yields cores as others take them: --threads auto)",
        "seconds": seconds, "median_s": median,
        "ratio_to_plain": {name: median[name] / median["plain"] for name in median},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for name in configs:
        print(f"{name:34s} {median[name]:6.2f} s  x{result['ratio_to_plain'][name]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
