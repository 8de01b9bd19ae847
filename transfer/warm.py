"""Warm stage processes: a server per environment imports TensorFlow once, and each stage runs in a fresh fork of it.

Every TensorFlow stage is a Python process that pays TensorFlow's import (2 to 5 s) before any work, three times
in a head experiment. With this on (the default on Linux), a stage script calls :func:`hand_over` first: it finds
the server for its environment (or starts one and waits for its import), sends it its argv, working folder,
environment, umask and standard streams (the file descriptors themselves), and the server forks a process that
runs the script as ``python stages/x.py`` would, from the project's current code, then passes back its exit
status, or the signal that ended it. Signals sent to the stage's process go on to that fork, and a stage whose
caller dies is stopped. What the fork inherits is the server's state just after its import: no project module
(they are imported afresh from the stage's folder), no thread but the BLAS pool, no device touched. The commands
of ``python -m transfer`` that load a model (predict, export) hand themselves over too, as a module.

A server serves one environment: its key covers the interpreter and its flags, the installed packages (each
``sys.path`` folder's modification time), this module's and the import's own code, the variables read at import
(TF_, KERAS_, CUDA_, XLA_, PYTHON, LD_, LC_, LANG, OMP_, MKL_, MPL...), Keras' config file, the resource limits, the
niceness, the CPU affinity and the control group. Anything else gives another server. A server exits after
``TRANSFER_WARM_IDLE`` seconds without a stage (900 by default).

    TRANSFER_WARM=0          run each stage in its own process, importing TensorFlow itself
    TRANSFER_WARM_DIR=...    where the servers' sockets live (default: a private folder in the runtime dir)
    python -m transfer.warm status | stop
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

SWITCH, FOLDER, IDLE = "TRANSFER_WARM", "TRANSFER_WARM_DIR", "TRANSFER_WARM_IDLE"
# Variables that the interpreter, TensorFlow, Keras, matplotlib or the C libraries read while importing.
KEYED_PREFIXES = ("TF_", "KERAS_", "CUDA_", "XLA_", "NVIDIA_", "PYTHON", "LD_", "LC_", "LANG", "OMP_", "MKL_",
                  "OPENBLAS_", "MPL", "HOME", "XDG_")
_CODE = ("__init__.py", "process.py", "warm.py", "warm_server.py")  # what the server itself runs of this package
START_TIMEOUT_S, ACK_TIMEOUT_S = 180.0, 60.0
LOCKED = 3  # a server's exit status when another one already serves its key
STDIO = (0, 1, 2)
_in_fork = False  # set in the processes the server forks to run a stage (mark_forked)


def mark_forked() -> None:
    """This process is a stage's, forked by the server: :func:`hand_over` returns at once here."""
    global _in_fork
    _in_fork = True


def enabled() -> bool:
    switch = os.environ.get(SWITCH, "1").strip().lower()
    return (sys.platform == "linux" and switch not in ("0", "false", "no", "off") and not _in_fork
            and hasattr(socket, "send_fds"))


def idle_seconds() -> float:
    """``TRANSFER_WARM_IDLE``: how long a server waits for a stage before it exits (900 s by default)."""
    value = os.environ.get(IDLE, "900")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{IDLE} = {value!r} is invalid: expected the seconds a stage server waits, a number > 0")
    return seconds


def folder() -> Path:
    """The servers' folder, created private (0700); a folder that another user owns or can write is refused."""
    chosen = os.environ.get(FOLDER)
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    base = Path(chosen) if chosen else runtime / f"transfer-warm-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    facts = base.stat()
    if facts.st_uid != os.getuid() or facts.st_mode & 0o077:
        raise PermissionError(f"{base} must belong to this user and be private (mode 0700) to hold stage servers")
    return base


def environment_key(package: Path, script: str, leave_out: str | None = None) -> str:
    """A digest of everything that the server's import depends on (see the module's docstring). The project's
    own folders on ``sys.path`` are left out, so every copy of the project (DVC's temporary ones for queued
    experiments too) shares the server; so is ``leave_out``, a folder whose files change as work goes on."""
    import resource

    project = {os.path.realpath(entry) for entry in (package.parent, os.path.dirname(script), leave_out) if entry}
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    config = keras_home / "keras.json"
    facts = {
        "python": [sys.executable, sys.version, repr(sys.flags)],
        "path": [(entry, _mtime(entry)) for entry in sys.path if os.path.realpath(entry or ".") not in project],
        "code": [hashlib.sha256((package / name).read_bytes()).hexdigest() for name in _CODE],
        "env": sorted((name, value) for name, value in os.environ.items() if name.startswith(KEYED_PREFIXES)),
        "keras_config": config.read_text() if config.is_file() else None,
        "limits": [resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_")],
        "nice": os.nice(0),
        "cpus": sorted(os.sched_getaffinity(0)),
        # A batch job's or a systemd scope's control group: a stage forked by a server outside it would escape its
        # limits and accounting, and end with the job that started the server.
        "cgroup": _read("/proc/self/cgroup"),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _mtime(entry: str) -> int | None:
    try:
        return os.stat(entry).st_mtime_ns
    except OSError:
        return None


def hand_over(name: str, script: str, module: str | None = None) -> None:
    """In a stage script run as ``__main__``: run it in a fork of the warm server for this environment and exit
    with its status. Returns, and the script runs here, where the server is off (``TRANSFER_WARM=0``), not
    Linux, inside a fork already, or cannot be reached or started.

    With ``module`` (a package's ``__main__.py`` run by ``python -m module``), the fork runs that module with this
    process's ``sys.path``, as ``-m`` would; the folder ``-m`` put first (the working one) stays out of the key.
    """
    if name != "__main__" or not enabled():
        return
    package, script = Path(__file__).resolve().parent, os.path.abspath(script)
    try:
        leave_out = sys.path[0] if module else None
        idle, path = idle_seconds(), folder() / f"{environment_key(package, script, leave_out)}.sock"
        connection = _connect(path) or _start_and_connect(path, package.parent, idle)
    except (OSError, ValueError) as error:
        print(f"transfer.warm: running here: the stage server is unavailable ({error})", file=sys.stderr)
        return
    if connection is None:
        return
    sys.exit(_run_remotely(connection, script, module))


def _connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        return None
    return client


def _start_and_connect(path: Path, root: Path, idle: float) -> socket.socket | None:
    """Start a server for ``path`` and wait for its import; None where it fails (this process runs the stage)."""
    import subprocess

    with open(path.with_suffix(".log"), "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", "import transfer.warm_server as server; server.serve()", str(path), str(root),
             str(idle)],
            cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if (connection := _connect(path)) is not None:
            return connection
        if server.poll() not in (None, LOCKED):
            print(f"transfer.warm: running here: the stage server exited with status {server.returncode} "
                  f"(see {path.with_suffix('.log')})", file=sys.stderr)
            return None
        time.sleep(0.05)
    print(f"transfer.warm: running here: the stage server did not start in {START_TIMEOUT_S:.0f} s", file=sys.stderr)
    return None


def _run_remotely(connection: socket.socket, script: str, module: str | None) -> int:
    """Send the request, pass signals on, and return the exit status of the fork that ran the stage (or end this
    process by the signal that ended it)."""
    sent = [fd for fd in STDIO if _is_open(fd)]
    body = json.dumps({"script": script, "module": module, "path": sys.path, "argv": sys.argv, "cwd": os.getcwd(),
                       "env": dict(os.environ), "umask": _umask(), "client": os.getpid(), "fds": sent}).encode()
    message = len(body).to_bytes(8, "big") + body
    done = socket.send_fds(connection, [message], sent)
    connection.sendall(message[done:])
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, lambda received, frame: connection.sendall(f"signal {received}\n".encode()))
    reader = connection.makefile("r")
    connection.settimeout(ACK_TIMEOUT_S)
    try:
        started = reader.readline()
    except TimeoutError:
        started = ""
    if not started.startswith("started "):
        print(f"transfer.warm: the stage server gave no answer in {ACK_TIMEOUT_S:.0f} s; stop it with "
              f"`python -m transfer.warm stop`, or set {SWITCH}=0", file=sys.stderr)
        return 1
    connection.settimeout(None)
    kind, _, value = reader.readline().partition(" ")
    if kind == "signal":
        number = int(value)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        return 128 + number
    if kind != "exit":
        print("transfer.warm: the stage's process ended without an exit status (its server was stopped)",
              file=sys.stderr)
        return 1
    return int(value)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.warm status`` lists this user's stage servers; ``stop`` ends them."""
    command = (argv if argv is not None else sys.argv[1:]) or ["status"]
    if command[0] not in ("status", "stop"):
        print(f"usage: python -m transfer.warm status | stop (not {command[0]!r})", file=sys.stderr)
        return 2
    import fcntl

    servers = 0
    for lock_path in sorted(folder().glob("*.lock")):
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                written = lock.read().split()
                if not written:  # a server that has just taken its lock and not yet written its pid
                    continue
                pid = int(written[0])
                servers += 1
                if command[0] == "stop":
                    lock_path.with_suffix(".sock").unlink(missing_ok=True)
                    os.kill(pid, signal.SIGTERM)
                state = "stopped" if command[0] == "stop" else "serving"
                print(f"{state}: pid {pid}, {lock_path.with_suffix('.sock')}")
                continue
        for suffix in (".lock", ".sock", ".log"):  # no server holds it: leftovers of one that ended
            lock_path.with_suffix(suffix).unlink(missing_ok=True)
    if not servers:
        print(f"no stage server in {folder()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
