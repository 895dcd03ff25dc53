"""A Python interpreter with torch and torchvision already imported, forked once for each script a test runs.

Starting Python and importing torch and torchvision takes about 6 s on a 2-core machine, which is most of the
time of a CLI test whose run stops at its argument checks, and the suite runs such scripts over a hundred
times. The server (`python tests/warm_python.py`, started by conftest.run on first use) imports third-party
libraries only, never the project's modules, and forks one child per request. The child is a process of its
own (pid, exit code, signals, file descriptors, environment, working directory) that runs the script as
`python SCRIPT ARGS` would: `sys.argv`, `sys.path[0]` the script's folder, `__name__ == "__main__"`, an
uncaught exception printed with its traceback and exit code 1, atexit handlers and thread joins at the end.
The project is imported fresh by every child, so a script that would fail to import in a fresh interpreter
fails here too. What the server cannot reproduce (an environment variable read at import time, `-m` and `-c`
runs) falls back to a fresh interpreter, as do torchrun's workers and the process-group tests of
tests/test_reliability.py, which start train.py and train_multi_GPU.py from scratch.

On Linux only (elsewhere every script starts a fresh interpreter). Set FCN_TESTS_FRESH_PYTHON=1 to run every
script in a fresh interpreter on Linux too.

Protocol: one JSON request per line on stdin ({"argv", "cwd", "env", "stdout", "stderr"}, the last two file
paths), answered on stdout by {"pid": N} at the fork and {"returncode": N} at the child's end (-N for
signal N, as subprocess reports it). Requests are served one at a time.
"""
import atexit
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

# What every project script imports first (the heavy part of its start-up time).
PRELOAD = ("numpy", "PIL.Image", "yaml", "tqdm", "torch", "torchvision")


# ---------------------------------------------------------------------------------------------- server

def _exit_code(code: object) -> int:
    """The exit status Python gives to `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _redirect(path: str, fd: int, flags: int) -> None:
    new = os.open(path, flags, 0o644)
    os.dup2(new, fd)
    os.close(new)


def _child(request: Dict, reply_fd: int) -> None:
    """Runs in the forked child: becomes `python argv...` and never returns."""
    code = 1
    try:
        os.close(reply_fd)
        _redirect(os.devnull, 0, os.O_RDONLY)
        _redirect(request["stdout"], 1, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        _redirect(request["stderr"], 2, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores Ctrl-C; Python does not
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        code = 0
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = _exit_code(e.code)
        except KeyboardInterrupt:  # Python ends an uncaught Ctrl-C by the signal itself
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # what the interpreter does at exit: join the non-daemon threads
        atexit._run_exitfuncs()  # logging.shutdown, multiprocessing's clean-up, the script's own
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


def serve() -> None:
    """Reads requests on stdin until it closes; answers on the original stdout."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; pytest handles it
    for name in PRELOAD:
        __import__(name)
    os.write(reply_fd, b'{"ready": true}\n')
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, reply_fd)
        os.write(reply_fd, (json.dumps({"pid": pid}) + "\n").encode())
        _, status = os.waitpid(pid, 0)
        os.write(reply_fd, (json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())


# ---------------------------------------------------------------------------------------------- client

class WarmPython:
    """The client side: starts the server and runs scripts through it."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, bufsize=1, cwd=Path(__file__).parent)
        self._tmp = tempfile.TemporaryDirectory(prefix="warm_python_")
        if json.loads(self._proc.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError("tests/warm_python.py did not start")
        atexit.register(self.close)

    def run(self, argv: List[str], cwd: Path, env: Dict[str, str],
            timeout: Optional[float]) -> subprocess.CompletedProcess:
        out, err = Path(self._tmp.name, "stdout"), Path(self._tmp.name, "stderr")
        request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        pid = json.loads(self._proc.stdout.readline())["pid"]
        timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL)) if timeout else None
        start = time.monotonic()
        if timer:
            timer.start()
        try:
            returncode = json.loads(self._proc.stdout.readline())["returncode"]
        finally:
            if timer:
                timer.cancel()
        stdout, stderr = (p.read_text(errors="replace") for p in (out, err))
        if timeout and returncode == -signal.SIGKILL and time.monotonic() - start >= timeout:
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, stdout, stderr)
        return subprocess.CompletedProcess([sys.executable, *argv], returncode, stdout, stderr)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
        self._tmp.cleanup()


_SERVER: Optional[WarmPython] = None


def run_script(argv: List[str], cwd: Path, env: Dict[str, str],
               timeout: Optional[float]) -> Optional[subprocess.CompletedProcess]:
    """`python argv...` through the warm server; None where it does not apply (not a script, or turned off)."""
    global _SERVER
    # Linux only: Windows has no fork, and macOS does not allow fork after some system frameworks are loaded.
    if (sys.platform != "linux" or os.environ.get("FCN_TESTS_FRESH_PYTHON") == "1" or not argv
            or not argv[0].endswith(".py")):
        return None
    if _SERVER is None:
        _SERVER = WarmPython()
    return _SERVER.run(argv, cwd, env, timeout)


def shutdown() -> None:
    """Stops the server (the next run_script starts a new one)."""
    global _SERVER
    if _SERVER is not None:
        _SERVER.close()
        _SERVER = None


if __name__ == "__main__":
    serve()
