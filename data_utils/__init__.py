"""The data layer: photos and masks on disk to (image, mask) samples and batches. It imports only core/.

    data_utils.io        reading photos (EXIF-oriented) and masks, writing masks, label maps
    data_utils.pairs     the (image, mask) files of a split: the VOC layout, two folders
    data_utils.datasets  SegmentationDataset, VOCSegmentation, SegmentationFolder
    data_utils.registry  DATASETS: one DatasetSpec per --dataset name, and build_dataset
    data_utils.collate   collate_fn: batches of mixed sizes, padded
    data_utils.demo      the synthetic demo dataset
    data_utils.check     pixel counts per class, and the `check` command's scan and report
"""
from .check import check_split, class_pixel_counts, print_report, scan_split
from .collate import collate_fn
from .datasets import Sample, SegmentationDataset, SegmentationFolder, Transforms, VOCSegmentation, own_class_file
from .demo import DEMO_CLASSES, boundary_band, make_demo_dataset, make_demo_sample
from .io import (DECODERS, IMAGE_EXTENSIONS, check_label_map, check_mask_values, image_note, image_size,
                 label_counts, make_label_map, read_image, read_mask, save_mask)
from .pairs import (Pair, complete_pairs, folder_pairs, missing_files, raise_if_missing, read_split_ids, voc_dir,
                    voc_pairs)
from .registry import (DATASETS, DatasetSpec, build_dataset, build_from_pairs, dataset_spec, find_folder_pairs,
                       find_voc_pairs, own_class_names)

__all__ = [
    "check_split", "class_pixel_counts", "print_report", "scan_split",
    "collate_fn",
    "Sample", "SegmentationDataset", "SegmentationFolder", "Transforms", "VOCSegmentation", "own_class_file",
    "DEMO_CLASSES", "boundary_band", "make_demo_dataset", "make_demo_sample",
    "DECODERS", "IMAGE_EXTENSIONS", "check_label_map", "check_mask_values", "image_note", "image_size",
    "label_counts", "make_label_map",
    "read_image", "read_mask", "save_mask",
    "Pair", "complete_pairs", "folder_pairs", "missing_files", "raise_if_missing", "read_split_ids", "voc_dir",
    "voc_pairs",
    "DATASETS", "DatasetSpec", "build_dataset", "build_from_pairs", "dataset_spec", "find_folder_pairs",
    "find_voc_pairs", "own_class_names",
]
