"""A run's records: the run directory and every file name in it, the Recorder seam that the training loop
feeds, the recorders of train.log, results.txt, metrics.jsonl and steps.jsonl, and a run's history read back.

    recording.run_files  the names of a run directory's files, defined once
    recording.run_dir    creating, owning and checking a run directory; train.log; config.yaml
    recording.recorders  Recorder, StepRecord, EpochRecord and the recorders of the text records
    recording.history    steps.jsonl and metrics.jsonl read back (curves.png, tools/plot_curves.py)

It imports only core/: the engine (train_utils/) and the pictures (visualization/) build on it.
"""
from .history import RunHistory, load_history, read_jsonl
from .recorders import (
                        EpochRecord,
                        IntervalLoss,
                        LogRecorder,
                        MetricsRecorder,
                        Recorder,
                        Recorders,
                        ResultsRecorder,
                        StepRecord,
                        StepsRecorder,
                        default_recorders,
)
from .run_dir import prepare_output_dir, release_run_dir, setup_logging, write_config

__all__ = [
    "EpochRecord", "IntervalLoss", "LogRecorder", "MetricsRecorder", "Recorder", "Recorders", "ResultsRecorder",
    "RunHistory", "StepRecord", "StepsRecorder", "default_recorders", "load_history", "prepare_output_dir",
    "read_jsonl", "release_run_dir", "setup_logging", "write_config",
]
