"""Runs a project script under a real fault: `python tests/fault_sim.py MODE VALUE SCRIPT ARGS...`.

    kill-before-copy NAME   the process sends itself SIGKILL at the moment it is about to link (or copy) the
                            checkpoint NAME from last.pth, which it has just replaced: the state a kill -9 at
                            that instant leaves. Only the moment is arranged; the kill and what is on disk are real.
    max-file-size BYTES     RLIMIT_FSIZE: a write past BYTES in any file fails with EFBIG ("File too large"),
                            as a write on a full disk fails with ENOSPC (SIGXFSZ ignored, so the write returns
                            the error instead of killing the process).
"""
import os
import resource
import runpy
import signal
import sys


def _kill_before_copy(name: str) -> None:
    import train_utils.checkpoint as checkpoint

    copy = checkpoint.atomic_copy

    def atomic_copy(src, dst):
        if os.path.basename(dst) == name:
            os.kill(os.getpid(), signal.SIGKILL)
        copy(src, dst)

    checkpoint.atomic_copy = atomic_copy


def _max_file_size(limit: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


if __name__ == "__main__":
    mode, value, script = sys.argv[1:4]
    sys.argv = sys.argv[3:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    {"kill-before-copy": _kill_before_copy, "max-file-size": _max_file_size}[mode](value)
    runpy.run_path(script, run_name="__main__")
