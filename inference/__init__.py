"""Running a trained model: what predict.py, validation.py and the training evaluation share.

    inference.forward  normalising photos, the one forward pass (autocast, memory format, logits resized)
    inference.modes    whole image, sliding window, multi-scale + flip; the inference flags
    inference.memory   the memory a whole-image pass needs, and the memory left
    inference.loading  a checkpoint rebuilt and prepared for inference
    inference.photos   photos decoded in loader workers, batched by size
    inference.folder   folder prediction: batches through the model, files written by background threads
    inference.outputs  the names of predict.py's files
    inference.export   the ONNX export (BN folded, dynamic batch and size, metadata) and its cache
    inference.backends --backend torch|onnxruntime|openvino: the ONNX model run like the torch model
    inference.agreement two evaluations compared pixel by pixel (int8 against fp32)
    inference.pt2e      int8 in torch itself: PT2E with torchao's x86 quantizer, compiled by TorchInductor

It imports core/, src/ and data_utils/ only: running a model does not need the training engine.
"""
from .agreement import PixelAgreement, accuracy_lost, chain_hooks
from .backends import BackendModel, ParityChecked, add_backend_flags, check_backend_args, load_backend
from .folder import BackgroundWriter, FolderResult, Prediction, predict_folder, predict_images
from .forward import Inferer, normalize, predict_masks, predict_scores, prepare_images, resize_logits, whole_image
from .loading import load_inference_model, prepare_inference_model
from .modes import (
                    InferenceMode,
                    add_inference_flags,
                    inferer_from_args,
                    make_inferer,
                    slide_inference,
    slide_masks,
                    tta_inference,
                    window_starts,
)
from .outputs import check_output_files, output_stems, output_target, refuse_overwriting_inputs
from .photos import PhotoBatch, PhotoFolder, photo_loader, size_batches

__all__ = [
    "BackendModel", "ParityChecked", "PixelAgreement", "accuracy_lost", "chain_hooks", "add_backend_flags", "check_backend_args", "load_backend",
    "BackgroundWriter", "FolderResult", "Inferer", "InferenceMode", "PhotoBatch", "PhotoFolder", "Prediction",
    "add_inference_flags", "check_output_files", "inferer_from_args", "load_inference_model", "make_inferer", "normalize",
    "output_stems", "output_target", "photo_loader", "predict_folder", "predict_images", "predict_masks", "predict_scores", "prepare_images",
    "prepare_inference_model", "refuse_overwriting_inputs", "resize_logits", "size_batches", "slide_inference", "slide_masks",
    "tta_inference", "whole_image", "window_starts",
]
