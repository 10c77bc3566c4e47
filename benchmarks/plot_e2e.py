"""Plot bench_e2e results: restart-steps per second against R, one line per path, one panel per size.

    python benchmarks/plot_e2e.py [benchmarks/results/e2e-cpu.json ...] [-o benchmarks/results/e2e-cpu.png]

Reads the JSON files bench_e2e.py writes (several files, e.g. glibc defaults and malloc tuned, become
solid and dashed lines of the same colour) and writes one PNG. Needs matplotlib (pip install matplotlib);
the benchmarks themselves do not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PATH_STYLE = {"fused": "tab:red", "fused_onednn": "tab:orange", "reference": "tab:blue", "grouped": "tab:gray"}
LINE_STYLES = ["-", "--", ":", "-."]


def load_rows(path: str) -> list[dict]:
    with open(path) as f:
        data = json.load(f)
    return [row for row in data["rows"] if row.get("status") == "ok"]


def run_label(path: str) -> str:
    """How a results file is named in the legend: its allocator variant, else its file name."""
    variants = {row.get("variant", "base") for row in load_rows(path)}
    names = {"base": "glibc malloc", "mallopt": "malloc tuned"}
    return names.get(variants.pop(), os.path.basename(path)[:-5]) if len(variants) == 1 else os.path.basename(path)[:-5]


def plot(files: list[str], out: str) -> str:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_e2e.py needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(run_label(path), load_rows(path)) for path in files]
    # Panels: the sizes measured at more than one R (a line needs two points).
    sizes = sorted({row["size"] for _, rows in runs for row in rows
                    if sum(r["size"] == row["size"] and r["path"] == row["path"] for r in rows) > 1})
    if not sizes:
        raise SystemExit(f"no size was measured at two or more R in {', '.join(files)}")
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for (name, rows), style in zip(runs, LINE_STYLES):
            for path, colour in PATH_STYLE.items():
                points = sorted((r["R"], r["restart_steps_per_s"]) for r in rows if r["size"] == size and r["path"] == path)
                if len(points) < 2:
                    continue
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colour, marker="o",
                        label=f"{path} ({name})" if len(runs) > 1 else path)
        ax.set_xscale("log", base=2)
        r_values = sorted({r["R"] for _, rows in runs for r in rows if r["size"] == size})
        ax.set_xticks(r_values, [str(r) for r in r_values])
        ax.set_xlabel("restarts R (one batch)")
        ax.set_ylabel("restart-steps / s (higher is better)")
        ax.set_title(f"PULSE step, {size}-px generator")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    machine = json.load(open(files[0])).get("machine", {})
    fig.suptitle(f"{machine.get('device', '')} {machine.get('cpu', '')}, {machine.get('torch_threads', '')} threads, "
                 f"torch {machine.get('torch', '')}, {machine.get('date', '')[:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out + ".tmp.png", dpi=110)
    os.replace(out + ".tmp.png", out)  # never a half-written picture
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="bench_e2e JSON results (default: e2e-cpu.json and e2e-mallopt-cpu.json)")
    parser.add_argument("-o", "--output", default=None, help="PNG path (default: next to the first file)")
    args = parser.parse_args(argv)
    files = args.files or [os.path.join(HERE, "results", name) for name in ("e2e-cpu.json", "e2e-mallopt-cpu.json")]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        print(f"plot_e2e.py: no such results file: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = args.output or files[0][:-5] + ".png"
    print("wrote", plot(files, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
