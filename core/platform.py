"""Operating-system calls with a path for each platform: atomic files, locks, links, directory fsync, signals.

Every file is written to a temporary name in the same directory, flushed to disk, then moved over the old
one with os.replace (atomic on POSIX and on Windows' NTFS): a reader sees the old file or the new one, never
half of either. Appends work the same way (copy + append + replace) under a lock. What POSIX has and Windows
lacks (fcntl, os.fchmod, fsync of a directory, sigtimedwait, and on some filesystems hard links) is looked up
when it is called, so that every module imports everywhere.
"""
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

# Read once: reading it means setting it, which would briefly give files that other threads create no umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    return fcntl


# ---------------------------------------------------------------------------------------------------- files

def usable_cpu_count() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroups' cpusets, SLURM), not the machine's
    count, which is what a default number of worker processes has to fit."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: the affinity mask where the OS has one
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows have no affinity call in os
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def fsync_dir(directory: PathLike) -> None:
    """Makes a rename in `directory` durable (POSIX). Windows cannot open a directory and needs no such step:
    NTFS journals the rename itself."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _set_default_mode(fd: int, path: str) -> None:
    # mkstemp creates 0600; give the file the permissions a plain open() would have.
    mode = 0o666 & ~_UMASK
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:
        os.chmod(path, mode)


def replace(src: PathLike, dst: PathLike, attempts: int = 20) -> None:
    """os.replace, retried for a moment on Windows, where a reader holding `dst` open blocks the rename."""
    for attempt in range(attempts):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt + 1 == attempts:
                raise
            time.sleep(0.05)


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Calls write(file) on a temporary file next to `path`, then atomically replaces `path` with it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _set_default_mode(fd, tmp)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def check_writable(path: PathLike, what: str, appendable: bool = False) -> None:
    """Raises a one-line OSError naming `what` (a flag) unless `path` can be written as atomic_write writes
    it: a temporary file in its folder, then a rename. Nothing is left behind (folders are not created).
    With `appendable` (a file append_text extends), a link is checked at its target, and an existing file that
    can be written in place also passes.

    For checking an output before hours of work, not after.
    """
    path = Path(path)
    if appendable and path.is_symlink():
        path = Path(os.path.realpath(path))
    if appendable and path.is_file() and os.access(path, os.W_OK):
        return
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders that do not exist yet are created when the file is written
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {path}: {folder} is a file, not a folder; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write_test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PermissionError(f"{what} {path}: cannot write in {folder} ({e.strerror or e}); choose a writable "
                              f"path") from None


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    """Makes `dst` a copy of `src` atomically: a hard link where the platform and filesystem have them (no
    bytes written; `src` is later replaced, never modified in place, so the link keeps its content), else a
    full copy."""
    src, dst = Path(src), Path(dst)
    if hasattr(os, "link"):
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
            replace(tmp, dst)
            fsync_dir(dst.parent)
            return
        except OSError:  # FAT, some network filesystems: no hard links
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out, 16 << 20))


# ---------------------------------------------------------------------------------------------------- locks

class FileLock:
    """An exclusive lock on `path` (created if missing), held by an open file: the OS releases it when the
    process ends, so a crashed or killed holder never leaves it stuck. flock on POSIX, msvcrt on Windows.

    A child made by fork (DataLoader workers) would share the locked file, and the lock would outlive a
    killed holder until its last worker noticed; the child's copy is closed at fork, so the lock lives exactly
    as long as the process that took it.

    Args:
        path: the lock file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._file: Optional[Any] = None

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None, owner: str = "") -> bool:
        """Takes the lock; returns False if another process holds it and `blocking` is False, or still holds
        it after `timeout` seconds. `owner` (who holds it: a pid, a command) is written into the file."""
        f = open(self.path, "a+b")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not _try_lock(f):
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    f.close()
                    return False
                time.sleep(0.05)
        except BaseException:
            f.close()
            raise
        self._file = f
        _HELD[id(self)] = self
        if owner:
            self._write_owner(owner)
        return True

    def _write_owner(self, owner: str) -> None:
        # Windows locks byte 0 only, so the owner text (after it) stays readable to the processes refused.
        f = self._file
        with contextlib.suppress(OSError):
            f.seek(1)
            f.truncate()
            f.write(owner.encode("utf-8", "replace") + b"\n")
            f.flush()

    def owner(self) -> str:
        """What the holder wrote into the lock file (empty if nothing or unreadable)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(1)  # past the byte Windows locks, which another process cannot read
                return f.read(4096).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        _HELD.pop(id(self), None)
        if self._file is not None:
            _unlock(self._file)
            self._file.close()
            self._file = None

    def _drop_in_child(self) -> None:
        # Closing (not unlocking: that would release the parent's lock too) the child's copy of the file.
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# Locks held by this process, so that a forked child can drop its copies; weak, so that a lock object that
# goes away still closes its file (and frees the lock) as before.
_HELD: "weakref.WeakValueDictionary[int, FileLock]" = weakref.WeakValueDictionary()


def _after_fork_in_child() -> None:
    for lock in list(_HELD.values()):
        lock._drop_in_child()
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork (its children start fresh)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _try_lock(f: Any) -> bool:
    fcntl = _fcntl()
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    import msvcrt  # Windows

    f.seek(0)
    try:
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _unlock(f: Any) -> None:
    fcntl = _fcntl()
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return
    import msvcrt

    f.seek(0)
    with contextlib.suppress(OSError):
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def locked(directory: PathLike) -> Iterator[None]:
    """Serialises writers of the records in `directory` (two validation runs appending to one file). On POSIX
    the directory itself is locked; Windows cannot open a directory, so a hidden lock file stands in."""
    fcntl = _fcntl()
    if fcntl is None:
        with FileLock(Path(directory) / ".records.lock"):
            yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_text(path: PathLike, text: str) -> None:
    """Appends `text` to `path` (created if missing) so that the file is always either before or after.

    A symbolic link (a shared log) is appended through, as `>>` would: its target is the file replaced, so the
    link stays a link. Where the target's folder cannot take the temporary file (a log one may write but not
    create files beside), the text is appended in place under a lock on the file instead.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))  # every link of a chain followed, as open() would
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    try:
        with locked(path.parent):
            old = path.read_bytes() if path.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            atomic_write(path, lambda f: f.write(old + data))
    except PermissionError:
        if not os.access(path, os.W_OK):
            raise
        _append_in_place(path, data)


def _append_in_place(path: Path, data: bytes) -> None:
    """One O_APPEND write under an exclusive lock on the file itself (POSIX; Windows: the write alone)."""
    with open(path, "ab") as f:
        fcntl = _fcntl()
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def nan_to_none(obj: Any) -> Any:
    """NaN and infinite floats (anywhere in dicts, lists, tuples) to None, so that json.dumps writes strict
    JSON (which has neither)."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def append_jsonl(path: PathLike, record: Dict[str, Any]) -> None:
    """Appends one JSON line (NaN written as null, so every line parses as strict JSON)."""
    append_text(path, json.dumps(nan_to_none(record), sort_keys=False) + "\n")


# -------------------------------------------------------------------------------------------------- signals

# How long a DataLoader worker keeps serving batches after a SIGTERM that did not come from the main process.
WORKER_TERM_GRACE_S = 60.0


def _has_sigwait() -> bool:
    # Linux has all three; macOS lacks sigtimedwait, Windows all of them.
    return all(hasattr(signal, name) for name in ("sigtimedwait", "sigwaitinfo", "pthread_sigmask"))


def _serve_through_sigterm() -> None:
    """A worker's SIGTERM watcher (a thread; the signal is blocked everywhere else). A SIGTERM from the main
    process is the loader, or multiprocessing at exit, stopping this worker: it exits at once. One from
    elsewhere signalled the whole process group (`kill -- -PGID`, a scheduler's time limit): the main process
    got it too and is heading for its next safe point, so the worker keeps serving batches until the loader
    stops it, or WORKER_TERM_GRACE_S has passed."""
    deadline = None
    while True:
        if deadline is None:
            info = signal.sigwaitinfo({signal.SIGTERM})
        else:
            info = signal.sigtimedwait({signal.SIGTERM}, max(deadline - time.monotonic(), 0.0))
        if info is None:
            os._exit(128 + signal.SIGTERM)
        if info.si_pid == os.getppid():
            os._exit(0)  # a shutdown the main process asked for, not a failure
        deadline = deadline or time.monotonic() + WORKER_TERM_GRACE_S


def ignore_signals_in_worker(_: int = 0) -> None:
    """A DataLoader worker_init_fn. Ctrl-C and `kill -- -PGID` reach the workers too. They leave SIGINT to the
    main process, which stops the run at its next safe point and saves; SIGTERM: see `_serve_through_sigterm`
    (Linux; elsewhere it keeps its default)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _has_sigwait():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_serve_through_sigterm, name="sigterm-watch", daemon=True).start()


def stop_signals() -> tuple:
    """The signals that ask a run to stop at its next safe point: SIGINT, SIGTERM, and on Windows SIGBREAK
    (Ctrl-Break, and what a console close sends)."""
    names = ("SIGINT", "SIGTERM", "SIGBREAK")
    return tuple(getattr(signal, n) for n in names if hasattr(signal, n))


class StopRequest:
    """Turns the first stop signal into a request to stop at the next safe point (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in stop_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Optional[FrameType]) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        # os.write, not logging: a handler may run while the logging lock is held.
        os.write(2, f"\n{signal.Signals(signum).name} received: saving a checkpoint at the next print interval, "
                    f"then stopping (Ctrl-C again aborts at once)\n".encode())

    def __call__(self) -> bool:
        return self.signum is not None

    def name(self) -> str:
        """The name of the signal received (SIGTERM when another rank received it)."""
        return signal.Signals(self.signum if self.signum is not None else signal.SIGTERM).name


def exit_code(signum: Optional[int]) -> int:
    """The conventional exit code 128 + signal number of a run stopped by `signum` (SIGTERM if unknown)."""
    return 128 + int(signum if signum is not None else signal.SIGTERM)


class _StackT(ctypes.Structure):
    """Linux's stack_t (pointer, int flags, size_t size), for sigaltstack."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Restores the calling thread's alternate signal stack after the block.

    OpenVINO's CPU plugin installs a ~20 KB alternate signal stack on the thread that compiles a model and
    leaves it there; once a process has used AMX tiles, the signal frame no longer fits in it, and the next
    signal with a handler (a DataLoader worker's SIGCHLD, our SIGTERM handler) kills the process with
    SIGSEGV. Linux only; elsewhere the block just runs.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _StackT()
    kept = libc.sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if kept:
            libc.sigaltstack(ctypes.byref(before), None)


def file_sha256(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks (COCO's 450 MB annotation file: about a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
