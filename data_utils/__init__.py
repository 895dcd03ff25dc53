"""The data layer: photos and masks on disk to (image, mask) samples and batches. It imports only core/.

    data_utils.io        reading photos (EXIF-oriented) and masks, writing masks, label maps
    data_utils.pairs     the (image, mask) files of a split: the VOC layout, two folders
    data_utils.datasets  SegmentationDataset, VOCSegmentation, SegmentationFolder
    data_utils.registry  DATASETS: one DatasetSpec per --dataset name, and build_dataset
    data_utils.coco      COCO 2017 with the VOC classes (masks decoded from annotations with pycocotools)
    data_utils.cityscapes, data_utils.ade20k  their layouts, classes, palettes and label maps
    data_utils.labelme   labelme JSON -> the folder layout with index masks
    data_utils.colors    colour masks -> index masks
    data_utils.staging   converters write a whole output folder or nothing
    data_utils.collate   collate_fn: batches of mixed sizes, padded
    data_utils.demo      the synthetic demo dataset
    data_utils.check     pixel counts per class, and the `check` command's scan and report
"""
from .ade20k import ADE20K_CLASSES, ADE20K_LABEL_MAP, ADE20K_PALETTE
from .check import check_split, class_pixel_counts, print_report, scan_dataset, scan_split
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_MAP, CITYSCAPES_PALETTE
from .coco import COCO_VOC_CATEGORIES, COCOSegmentation, coco_target, load_annotations
from .collate import collate_fn
from .colors import convert_colors, load_colors
from .datasets import Sample, SegmentationDataset, SegmentationFolder, Transforms, VOCSegmentation, own_class_file
from .demo import (
    DEMO_CLASSES,
    DEMO_NUM_TRAIN,
    DEMO_NUM_VAL,
    DEMO_PALETTE,
    DEMO_SIZE,
    boundary_band,
    make_demo_dataset,
    make_demo_sample,
)
from .io import (
                 DECODERS,
                 DEFAULT_MAX_IMAGE_PIXELS,
                 IMAGE_EXTENSIONS,
                 add_max_image_pixels_flag,
                 check_label_map,
                 check_mask_values,
                 image_note,
                 image_size,
                 label_counts,
                 make_label_map,
                 max_image_pixels,
                 open_image,
                 read_image,
                 read_mask,
                 save_mask,
                 set_max_image_pixels,
)
from .labelme import import_labelme
from .pairs import (
                 Pair,
                 complete_pairs,
                 folder_pairs,
                 missing_files,
                 raise_if_missing,
                 read_split_ids,
                 voc_dir,
                 voc_pairs,
)
from .registry import (
                 DATASETS,
                 DatasetSpec,
                 build_dataset,
                 build_from_pairs,
                 dataset_spec,
                 find_folder_pairs,
                 find_voc_pairs,
                 own_class_names,
)

__all__ = [
    "ADE20K_CLASSES", "ADE20K_LABEL_MAP", "ADE20K_PALETTE",
    "check_split", "class_pixel_counts", "print_report", "scan_dataset", "scan_split",
    "CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_MAP", "CITYSCAPES_PALETTE",
    "COCO_VOC_CATEGORIES", "COCOSegmentation", "coco_target", "load_annotations",
    "convert_colors", "load_colors",
    "import_labelme",
    "collate_fn",
    "Sample", "SegmentationDataset", "SegmentationFolder", "Transforms", "VOCSegmentation", "own_class_file",
    "DEMO_CLASSES", "DEMO_NUM_TRAIN", "DEMO_NUM_VAL", "DEMO_PALETTE", "DEMO_SIZE",
    "boundary_band", "make_demo_dataset", "make_demo_sample",
    "DECODERS", "IMAGE_EXTENSIONS", "check_label_map", "check_mask_values", "image_note", "image_size",
    "label_counts", "make_label_map",
    "read_image", "read_mask", "save_mask", "DEFAULT_MAX_IMAGE_PIXELS", "add_max_image_pixels_flag",
    "max_image_pixels", "open_image", "set_max_image_pixels",
    "Pair", "complete_pairs", "folder_pairs", "missing_files", "raise_if_missing", "read_split_ids", "voc_dir",
    "voc_pairs",
    "DATASETS", "DatasetSpec", "build_dataset", "build_from_pairs", "dataset_spec", "find_folder_pairs",
    "find_voc_pairs", "own_class_names",
]
