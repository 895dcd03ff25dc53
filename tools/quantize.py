"""Writes an int8 ONNX model of a checkpoint: post-training static quantization calibrated on training images.

    python tools/quantize.py --weights runs/demo/best.pth --dataset folder --data-path data/demo --num-images 32
    python validation.py --dataset folder --data-path data/demo --weights runs/demo/best.pth \\
        --backend onnxruntime --onnx-model runs/demo/best.int8.onnx --device cpu   # int8 next to fp32
    python predict.py --weights runs/demo/best.pth --image photo.jpg --backend onnxruntime \\
        --onnx-model runs/demo/best.int8.onnx --device cpu

The checkpoint's fp32 export (BatchNorm folded, cached next to it, see inference/export.py) is quantized by ONNX
Runtime in QDQ format: weights int8 per output channel, activations int8 with ranges from --num-images training
images (evenly spaced over the split, preprocessed as validation.py does). ONNX Runtime and OpenVINO both run
int8 convolutions on QDQ models (VNNI / AMX where the CPU has them). The int8 model keeps the fp32 export's
metadata (class names, palette, normalisation, the checkpoint's SHA-256) and says how it was calibrated.
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages live at the repository root
from core.cli import ArgumentParser, HelpFormatter, add_config_flags, parse_with_config, positive_int, run_main  # noqa: E402
from core.platform import atomic_write, check_writable  # noqa: E402
from data_utils import build_dataset  # noqa: E402
from inference import normalize  # noqa: E402
from inference.export import cached_export  # noqa: E402
from src import add_model_flags, model_from_checkpoint  # noqa: E402
from src.fuse import prepare_for_inference  # noqa: E402
from train_utils.options import add_data_flags  # noqa: E402
from transforms import SegmentationPresetEval  # noqa: E402

CALIBRATION = ("minmax", "percentile", "entropy")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_config_flags(parser)
    add_data_flags(parser)
    add_model_flags(parser)
    parser.add_argument("--split", default="train", help="split whose images calibrate the activation ranges")
    parser.add_argument("--num-images", type=positive_int, default=32, help="calibration images")
    parser.add_argument("--calibration", choices=CALIBRATION, default="minmax",
                        help="how activation ranges are chosen from the calibration images")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="the int8 model (default: <checkpoint stem>.int8.onnx next to the checkpoint)")
    parser.add_argument("--export-cache", default=None, metavar="DIR",
                        help="folder of the cached fp32 export (default: the checkpoint's folder)")
    return parse_with_config(parser, argv)


def calibration_images(args: argparse.Namespace, num_classes: int) -> List[np.ndarray]:
    """--num-images normalised float32 (1, 3, H, W) arrays, evenly spaced over --split."""
    dataset = build_dataset(args.dataset, args.data_path, args.split,
                            SegmentationPresetEval(args.eval_size, args.eval_resize_masks))
    if dataset.num_classes != num_classes:
        raise ValueError(f"{args.weights}: {num_classes} classes, but the dataset at {args.data_path} has "
                         f"{dataset.num_classes}; calibrate on the data the model was trained for")
    count = min(args.num_images, len(dataset))
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    return [normalize(dataset[int(i)][0][None]).numpy() for i in picks]


class Calibration:
    """onnxruntime.quantization's CalibrationDataReader over a list of arrays (one image per batch: the
    images may differ in size)."""

    def __init__(self, input_name: str, images: List[np.ndarray]) -> None:
        self.input_name, self.images = input_name, images
        self.batches: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> Optional[dict]:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.batches = iter(self.images)


def quantize(fp32: Path, output: Path, images: List[np.ndarray], calibration: str, source: str) -> None:
    """ONNX Runtime static QDQ quantization of `fp32` into `output` (atomically), with the metadata kept."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    original = onnx.load(str(fp32))
    with tempfile.TemporaryDirectory(prefix="quantize_", dir=output.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Calibration(original.graph.input[0].name, images),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        model = onnx.load(str(quantized))
    del model.metadata_props[:]
    for prop in original.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key="quantization", value=f"int8 static QDQ (onnxruntime), weights per channel, "
                                                       f"{calibration} ranges from {source}")
    atomic_write(output, lambda f: f.write(model.SerializeToString()))


def main(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ValueError("tools/quantize.py needs onnxruntime and onnx: pip install onnxruntime onnx onnxscript") \
            from None
    weights = Path(args.weights)
    output = Path(args.output) if args.output else weights.resolve().parent / f"{weights.stem}.int8.onnx"
    check_writable(output, "--output")
    loaded = model_from_checkpoint(args.weights, args.model, args.num_classes)
    images = calibration_images(args, loaded.num_classes)
    model = prepare_for_inference(loaded.model, torch.device("cpu"), channels_last=False, fold=False)
    fp32, reused = cached_export(model, args.weights, loaded, cache_dir=args.export_cache)
    print(f"fp32 export: {fp32} ({'cached' if reused else 'exported, BN folded and checked'})")
    source = f"{len(images)} images of {args.dataset} {args.split} ({args.data_path})"
    quantize(fp32, output, images, args.calibration, source)
    print(f"wrote {output}: int8, calibrated on {source}")
    print(f"score it next to fp32: python validation.py --weights {args.weights} --dataset {args.dataset} "
          f"--data-path {args.data_path} --device cpu --backend onnxruntime --onnx-model {output}")
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
