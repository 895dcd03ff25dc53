"""Values shared by the data pipeline, the loss and the metrics, each defined once."""

# Pixels labelled 255 are object boundaries and "difficult" regions in Pascal VOC (and padding added by
# crops and batch collation): they carry no class, so the loss and the metrics skip them.
IGNORE_INDEX = 255

# torchvision's ImageNet statistics: the pretrained backbones expect inputs normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
