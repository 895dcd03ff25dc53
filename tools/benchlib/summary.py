"""The GPU protocol's verdict: the JSON files of tools/gpu_check.sh against the goals, as a Markdown table.

    python -m tools.benchlib.summary bench/gpu      # exit status 1 if a correctness check failed
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# (file, what, the value's path in the JSON, goal, higher is better)
GOALS: Tuple[Tuple[str, str, Tuple[str, ...], float, bool], ...] = (
    ("train", "train images/s, ours / baseline", ("ratio", "images_per_s"), 2.0, True),
    ("train", "train peak memory, ours / baseline", ("ratio", "peak_memory"), 0.6, False),
    ("train_compile", "train images/s with --compile, ours / baseline", ("ratio", "images_per_s"), 2.0, True),
    ("train_compile", "peak memory with --compile, ours / baseline", ("ratio", "peak_memory"), 0.6, False),
    ("eval", "eval images/s, ours / baseline", ("ratio", "images_per_s"), 3.0, True),
    ("infer", "infer latency, ours / baseline", ("ratio", "latency_mean"), 1.0, False),
    ("predict", "folder prediction images/s, ours / one at a time", ("ratio", "images_per_s"), 3.0, True),
)
# (file, what, the flag's path): correctness checks that must hold.
CHECKS = (("eval", "fp32 confusion matrices equal", ("check", "fp32_equal")),
          ("predict", "masks identical to one at a time", ("check", "masks_equal")),
          ("data", "masks identical across decoders", ("check", "masks_equal")),
          ("data", "images within rounding across decoders", ("check", "images_within_rounding")))


def dig(data: Optional[Dict[str, Any]], path: Tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def load(folder: Path) -> Dict[str, Dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def loader_row(data: Optional[Dict[str, Any]], workers: int) -> Optional[Dict[str, Any]]:
    return next((r for r in (data or {}).get("loader", []) if r["workers"] == workers), None)


def goal_lines(results: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = []
    for name, what, path, goal, higher in GOALS:
        value = dig(results.get(name), path)
        met = None if value is None else (value >= goal if higher else value <= goal)
        lines.append(row(what, value, f"{'>=' if higher else '<='} {goal:g}", met))
    data = results.get("data")
    for workers in (16,):
        r = loader_row(data, workers)
        lines.append(row(f"loader images/s with {workers} workers / GPU step rate", r and r["gpu_ratio"], ">= 1.5",
                         None if r is None or r["gpu_ratio"] is None else r["gpu_ratio"] >= 1.5))
    r = loader_row(data, 1)
    ratio = None if r is None else r["ratio"].get("median_round_ours_vs_baseline", r["ratio"]["ours_vs_baseline"])
    lines.append(row("loader images/s per worker, ours / torchvision's pipeline", ratio, ">= 1.5",
                     None if ratio is None else ratio >= 1.5))
    for name, what in (("train", "train"), ("eval", "eval"), ("infer", "infer")):
        for variant in ("baseline", "ours"):
            mfu = dig(results.get(name), ("variants", variant, "mfu"))
            lines.append(row(f"{what} MFU, {variant}", mfu, "", None))
    return lines


def row(what: str, value: Any, goal: str, met: Optional[bool]) -> str:
    shown = "missing" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
    verdict = "" if met is None else "met" if met else "missed"
    return f"| {what} | {shown} | {goal} | {verdict} |"


def summary(folder: Path) -> Tuple[str, bool]:
    """The Markdown report of `folder`, and whether every correctness check held."""
    results = load(folder)
    device = (folder / "device.txt").read_text().strip() if (folder / "device.txt").is_file() else "unknown GPU"
    lines = [f"GPU protocol on {device}", "", "| measure | value | goal | |", "|---|---|---|---|"]
    lines += goal_lines(results)
    ok = True
    lines += ["", "| correctness check | holds |", "|---|---|"]
    for name, what, path in CHECKS:
        value = dig(results.get(name), path)
        ok = ok and value is True
        lines.append(f"| {what} | {'missing' if value is None else 'yes' if value else 'NO'} |")
    return "\n".join(lines), ok


def main(argv: List[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m tools.benchlib.summary FOLDER (the output folder of tools/gpu_check.sh)",
              file=sys.stderr)
        return 2
    text, ok = summary(Path(argv[0]))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
