"""Pictures of a model's predictions and of a run.

    visualization.pictures      numpy/PIL only: coloured masks, error maps, tiles and grids, overlays
    visualization.plots         matplotlib figures (an optional extra): curves, confusion matrix, per-class IoU
    visualization.val_pictures  validation.py --save-dir: masks, tiles, the worst images, the figures
    visualization.recorders     the training recorders that draw: curves.png, vis/ grids, TensorBoard

It imports core/, data_utils/, inference/ and recording/: drawing a picture never needs the training engine.
"""
