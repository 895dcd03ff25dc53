"""The parts of tools/benchmark.py, one job each.

    inputs     synthetic photos and masks (in memory, or written as a folder dataset)
    baselines  what ours is compared with, written out: torchvision's reference recipe (train, eval, infer,
               its PIL data pipeline) and one-at-a-time folder prediction
    ours       the library's own code paths, called, not copied: train_batch, evaluate, predict_images,
               the training DataLoader, predict_folder
    timing     warm-up, interleaved rounds, images/s, latency, ratios
    flops      FLOPs per image, datasheet peaks, MFU
    report     the environment, the printed tables, the JSON file
    modes      one function per --mode, tying the above together, and its protocol text
"""
