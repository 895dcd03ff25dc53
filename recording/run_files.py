"""Every file name of a run directory, defined once: train.py writes them, validation.py, tools/ and the
recorders read them.

    runs/<name>/  config.yaml  train.log  results.txt  metrics.jsonl  steps.jsonl  last.pth  best.pth
                  curves.png  vis/epoch_<E>.png  tensorboard/  record_mAP.txt (validation.py)  .run.lock
"""
LAST, BEST = "last.pth", "best.pth"
CHECKPOINTS = (LAST, BEST)
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.txt"  # the reference's per-epoch text blocks
METRICS_FILE = "metrics.jsonl"  # one strict-JSON line per epoch
STEPS_FILE = "steps.jsonl"  # one line per print interval
RECORDS = (RESULTS_FILE, METRICS_FILE)  # what makes a folder hold a run, besides checkpoints
CURVES_FILE = "curves.png"
VIS_DIR = "vis"
TENSORBOARD_DIR = "tensorboard"
RECORD_FILE = "record_mAP.txt"  # validation.py appends here by default, next to the weights
RUN_LOCK = ".run.lock"
# Temporary files of the run's own atomic writes; a kill mid-write leaves one behind (a whole checkpoint's
# worth of bytes). Only these names: other tools (validation.py's record) may be writing in the folder.
ORPHAN_PATTERNS = (".*.pth.*.tmp", ".write_test.*.tmp", *(f".{name}.*.tmp" for name in (*RECORDS, CONFIG_FILE)))

