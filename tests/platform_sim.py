"""Runs a project script as on a platform without POSIX extras: `python tests/platform_sim.py SCRIPT ARGS...`.

Hidden: the fcntl module, os.fchmod, os.link, signal.sigtimedwait / sigwaitinfo / pthread_sigmask, as on
Windows. An `msvcrt` module stands in for Windows' byte-range locks (implemented over the real flock, captured
before fcntl is hidden), so the Windows locking path runs for real. On Windows itself nothing needs hiding:
the script just runs.
"""
import os
import runpy
import signal
import subprocess  # noqa: F401 (imported first: it takes a module named msvcrt to mean Windows)
import sys
import types


def _install() -> None:
    try:
        import fcntl as _real_fcntl
    except ImportError:  # Windows: the real msvcrt and the real absences are already there
        return
    sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError
    for name in ("fchmod", "link"):
        if hasattr(os, name):
            delattr(os, name)
    for name in ("sigtimedwait", "sigwaitinfo", "pthread_sigmask"):
        if hasattr(signal, name):
            delattr(signal, name)
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK = 0, 1, 2

    def locking(fd: int, mode: int, nbytes: int) -> None:
        if mode == msvcrt.LK_UNLCK:
            _real_fcntl.flock(fd, _real_fcntl.LOCK_UN)
            return
        flags = _real_fcntl.LOCK_EX | (_real_fcntl.LOCK_NB if mode == msvcrt.LK_NBLCK else 0)
        try:
            _real_fcntl.flock(fd, flags)
        except BlockingIOError:
            raise OSError(36, "Resource deadlock avoided") from None  # what msvcrt raises when it is held

    msvcrt.locking = locking
    sys.modules["msvcrt"] = msvcrt


if __name__ == "__main__":
    _install()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
