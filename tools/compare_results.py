"""Merge the benchmark JSON files that tools/compare_builds.sh writes (quantize_{before,after}_{round}.json,
w4a16_...) into one markdown table: each cell's kernel time before and after (the better of the rounds)
and the ratio after / before.

    python tools/compare_results.py OUT_DIR
"""

import glob
import json
import os
import sys


def load(out: str, bench: str, side: str) -> dict:
    best = {}
    for path in sorted(glob.glob(os.path.join(out, f"{bench}_{side}_*.json"))):
        for row in json.load(open(path))["rows"]:
            if bench == "quantize":
                key, ms = (row["M"], row["K"], row["format"], row["rotation"]), row["ms"]
            else:
                key, ms = (row["M"], row["N"], row["K"], row["format"]), row["fp4_ms"]
            best[key] = min(ms, best.get(key, ms))
    return best


def main() -> None:
    out = sys.argv[1]
    worst = 0.0
    for bench, cols in (("quantize", "M | K | format | r"), ("w4a16", "M | N | K | format")):
        before, after = load(out, bench, "before"), load(out, bench, "after")
        print(f"\n### {bench}\n\n| {cols} | before us | after us | after / before |\n|" + "---|" * 7)
        for key in sorted(before, key=str):
            if key not in after:
                continue
            ratio = after[key] / before[key]
            worst = max(worst, ratio)
            print(f"| {' | '.join(str(k) for k in key)} | {before[key] * 1e3:.1f} | {after[key] * 1e3:.1f} | {ratio:.3f} |")
    print(f"\nslowest cell: after / before = {worst:.3f}")


if __name__ == "__main__":
    main()
