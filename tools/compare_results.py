"""Merge the benchmark JSON files that tools/compare_builds.sh writes (quantize_{before,after}_{round}.json,
w4a16_...) into one markdown table: each cell's kernel time before and after (median over the rounds), the
ratio after / before, and the spread of the same build between rounds (max / min - 1, the larger of the two
builds'), the noise against which a ratio is read.

    python tools/compare_results.py RAW_DIR [OUT.json]
"""

import glob
import json
import os
import statistics
import sys


def load(raw: str, bench: str, side: str) -> tuple[dict, dict]:
    times, meta = {}, {}
    for path in sorted(glob.glob(os.path.join(raw, f"{bench}_{side}_*.json"))):
        data = json.load(open(path))
        meta = data["meta"]
        for row in data["rows"]:
            if bench == "quantize":
                key, ms = (row["M"], row["K"], row["format"], row["rotation"]), row["ms"]
            else:
                key, ms = (row["M"], row["N"], row["K"], row["format"]), row["fp4_ms"]
            times.setdefault(key, []).append(ms)
    return times, meta


def main() -> None:
    raw = sys.argv[1]
    result = {"benches": {}}
    lines = []
    for bench, cols in (("quantize", "M | K | format | r"), ("w4a16", "M | N | K | format")):
        before, meta = load(raw, bench, "before")
        after, _ = load(raw, bench, "after")
        result["meta"] = meta
        lines.append(f"\n### {bench} ({meta.get('device', '?')}, {meta.get('date', '?')})\n")
        lines.append(f"| {cols} | before us | after us | after / before | same-build spread |")
        lines.append("|" + "---|" * 8)
        rows = []
        for key in sorted(before, key=str):
            if key not in after:
                continue
            b, a = statistics.median(before[key]), statistics.median(after[key])
            spread = max(max(t) / min(t) - 1 for t in (before[key], after[key]))
            rows.append({"key": list(key), "before_ms": b, "after_ms": a, "ratio": a / b, "spread": spread,
                         "before_all_ms": before[key], "after_all_ms": after[key]})
            lines.append(f"| {' | '.join(str(k) for k in key)} | {b * 1e3:.1f} | {a * 1e3:.1f} | {a / b:.3f} | "
                         f"{100 * spread:.1f}% |")
        result["benches"][bench] = rows
        over = [r for r in rows if r["ratio"] > 1.03]
        lines.append(f"\n{bench}: {len(rows)} cells, {len(over)} above 1.03"
                     + "".join(f"; {r['key']} {r['ratio']:.3f} (spread {100 * r['spread']:.1f}%)" for r in over))
    print("\n".join(lines))
    if len(sys.argv) > 2:
        json.dump(result, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
