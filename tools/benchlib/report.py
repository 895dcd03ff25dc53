"""The environment of a run, the printed tables, and the JSON file."""
import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from core.platform import atomic_write, nan_to_none
from core.runtime import Runtime
from recording.run_dir import environment as run_environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def environment(runtime: Runtime) -> Dict[str, Any]:
    """What train.py writes to config.yaml, plus the device's name, the CPU count, torch's threads and the
    machine's load (a benchmark on a shared machine must say how shared it was)."""
    env = run_environment(runtime)
    env.update(device_name=device_name(runtime.device), cpu_count=os.cpu_count(),
               torch_threads=torch.get_num_threads(), load_average_start=os.getloadavg()[0])
    if runtime.device.type == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def fmt(value: Any, unit: str = "", na: str = "n/a (CPU)") -> str:
    if value is None:
        return na
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def variant_rows(result: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """(label, baseline, ours, ours/baseline) lines of the train/eval/infer table."""
    b, o, r = result["variants"]["baseline"], result["variants"]["ours"], result["ratio"]
    rows = [("images/s", fmt(b["images_per_s"]), fmt(o["images_per_s"]), fmt(r["images_per_s"], "x")),
            ("  per round", " ".join(f"{v:.3g}" for v in b["round_images_per_s"]),
             " ".join(f"{v:.3g}" for v in o["round_images_per_s"]),
             " ".join(f"{v:.3g}" for v in r["round_images_per_s"])),
            ("  median of the round ratios", "", "", fmt(r["median_round_images_per_s"], "x"))]
    if "latency_ms_mean" in b:
        rows += [("latency mean (ms)", fmt(b["latency_ms_mean"]), fmt(o["latency_ms_mean"]),
                  fmt(r["latency_mean"], "x")),
                 ("latency median (ms)", fmt(b["latency_ms_median"]), fmt(o["latency_ms_median"]),
                  fmt(r["latency_median"], "x"))]
    if "gflops_per_image" in b:
        rows += [("peak CUDA memory (MiB)", fmt(b["peak_memory_mib"]), fmt(o["peak_memory_mib"]),
                  fmt(r.get("peak_memory"), "x", na="")),
                 ("GFLOP per image", fmt(b["gflops_per_image"]), fmt(o["gflops_per_image"]), ""),
                 ("achieved TFLOP/s", fmt(b["achieved_tflops"]), fmt(o["achieved_tflops"]), ""),
                 ("peak TFLOP/s", fmt(b["peak_tflops"]), fmt(o["peak_tflops"]), ""),
                 ("MFU", fmt(b["mfu"]), fmt(o["mfu"]), "")]
    rows.append(("dtype / memory format", f"{b['settings']['dtype']} / {b['settings']['memory_format']}",
                 f"{o['settings']['dtype']} / {o['settings']['memory_format']}", ""))
    return rows + [("final loss", fmt(b["final_loss"]), fmt(o["final_loss"]), "")] if "final_loss" in b else rows


def print_table(rows: List[Tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def print_variants(result: Dict[str, Any]) -> None:
    print_table([("", result.get("baseline_label", "baseline (torchvision)"), "ours", "ours/baseline")]
                + variant_rows(result))
    for v in ("baseline", "ours"):
        if result["variants"][v].get("peak_source") not in (None, "n/a (CPU)"):
            print(f"peak of {v}: {result['variants'][v]['peak_source']}")


def print_check(check: Dict[str, Any]) -> None:
    if "argmax_agreement" in check:
        print(f"argmax agreement with the baseline: {check['argmax_agreement']:.4%} as timed "
              f"({'meets' if check['meets_target'] else 'misses'} the {check['target']:.1%} target), "
              f"{check['argmax_agreement_fp32']:.4%} in fp32; weights: {check['weights']}")
        if check["weights"].startswith("random"):
            print("  random weights leave many near-tied logits, so this says little: the target is for trained "
                  "weights (--weights)")
    elif "fp32_equal" in check:
        print(f"confusion matrix in fp32, ours vs baseline: {'EQUAL' if check['fp32_equal'] else 'DIFFERENT'} "
              f"({check['fp32_moved_pixels']} of {check['pixels_counted']} pixels moved; as timed: "
              f"{check['as_timed_moved_pixels']})")
        print("baseline matrix (rows ground truth, columns prediction):")
        for row in check["baseline_matrix"]:
            print("  " + " ".join(f"{v:>7d}" for v in row))
        if not check["fp32_equal"]:
            print("ours (fp32) minus baseline:")
            for a, b in zip(check["ours_fp32_matrix"], check["baseline_matrix"]):
                print("  " + " ".join(f"{x - y:>7d}" for x, y in zip(a, b)))
    elif "differing_pixels" in check:
        print(f"masks, ours vs one at a time: {'IDENTICAL' if check['masks_equal'] else 'DIFFERENT'} "
              f"({check['differing_pixels']} of {check['pixels']} pixels differ, {check['files']} files)")
    else:
        print(f"decoding, torchvision vs PIL, {check['files']} files: images max |difference| "
              f"{check['images_max_abs_diff']} ({check['images_differing_values']} values differ), masks "
              f"{'IDENTICAL' if check['masks_equal'] else 'DIFFERENT'}; first loader batch: masks "
              f"{'IDENTICAL' if check['batch_masks_equal'] else 'DIFFERENT'}, images max |difference| "
              f"{check['batch_images_max_abs_diff']}")


def print_loader(result: Dict[str, Any]) -> None:
    names = list(result["loader"][0]["variants"])
    rows = [("workers", *(f"{n} images/s (per worker)" for n in names), "ours/baseline (round median)",
             "ours/pil (round median)", "loader/GPU")]
    for row in result["loader"]:
        cells = [f"{v['images_per_s']:.4g} ({v['images_per_s_per_worker']:.4g})" for v in row["variants"].values()]
        gpu = "" if row["gpu_ratio"] is None else \
            f"{row['gpu_ratio']:.2f} ({'enough' if row['enough_for_gpu'] else 'too slow'})"
        ratio = row["ratio"]
        rows.append((str(row["workers"]), *cells,
                     f"{ratio['ours_vs_baseline']:.3g}x ({ratio['median_round_ours_vs_baseline']:.3g}x)",
                     f"{ratio['ours_vs_pil']:.3g}x ({ratio['median_round_ours_vs_pil']:.3g}x)", gpu))
    print_table(rows)


def print_backends(result: Dict[str, Any]) -> None:
    """The --backends / --int8 variants next to the baseline: latency (infer) or images/s (predict) ratios, pixel
    agreement with fp32 torch, peak host memory."""
    infer = "latency_median" in next(iter(result["backends"].values()))["ratio"]
    speed = "latency median (ms)" if infer else "images/s"
    rows = [("variant", speed, "ratio to baseline", "per round", "agreement with fp32 torch", "peak RSS (MiB)")]
    for name in ("baseline", "ours", *result["backends"]):
        v = result["variants"][name]
        value = v["latency_ms_median"] if infer else v["images_per_s"]
        if name == "baseline":
            ratio, rounds, agree = "1", "", ""
        else:
            r = result["ratio"] if name == "ours" else result["backends"][name]["ratio"]
            ratio = fmt(r["latency_median"] if infer else r["images_per_s"], "x")
            rounds = " ".join(f"{x:.3g}" for x in r["round_images_per_s"])
            agree = "(fp32 torch)" if name == "ours" else f"{result['backends'][name]['agreement_with_fp32_torch']:.4%}"
        rows.append((name, fmt(value), ratio, rounds, agree, fmt(v.get("peak_rss_mib"), na="n/a")))
    print("variants side by side (per round: images/s ratio, higher is faster):")
    print_table(rows)


def print_report(result: Dict[str, Any]) -> None:
    env = result["environment"]
    print(f"\n== {result['mode']} | {result['model'] or 'no model'} | {env['device']} ({env['device_name']}) | "
          f"torch {env['torch']} | torchvision {env['torchvision']} | load average {env['load_average_start']:.2f}")
    print("protocol:")
    for key, text in result["protocol"].items():
        print(f"  {key}: {text}")
    if result.get("loader"):
        print_loader(result)
    else:
        print_variants(result)
    if result.get("backends"):
        print_backends(result)
    if result.get("check"):
        print_check(result["check"])


def write_json(result: Dict[str, Any], path: str) -> None:
    """The result as strict JSON (NaN and infinities, e.g. a diverged loss, as null), written atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(nan_to_none(result), indent=2, allow_nan=False) + "\n"
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"wrote {out}")
