"""The warm stage server (transfer/warm.py): it imports TensorFlow once, then forks a process for each stage
handed over to it, which becomes that stage's process; a handler between the two passes the client's signals on
and sends back how the stage ended.

Imports nothing of the project but transfer.warm and transfer.process (both in the server's key), so that every
stage runs the project's modules as they are when it starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from transfer.process import WARM_CLIENT
from transfer.warm import LOCKED, STDIO, mark_forked


def serve() -> None:
    """The server's main (``argv``: socket path, project root, idle seconds). Returns only in a fork that is to
    run a stage, after :func:`_become_stage`: the interpreter then ends as that stage's would."""
    path, root, idle = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    import fcntl

    lock = open(path.with_suffix(".lock"), "a+")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(LOCKED)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    sys.path[0] = root
    from transfer.process import freeze_heap, import_tensorflow

    import_tensorflow()
    import PIL.Image  # noqa: F401 - every stage reads or writes images

    os.chdir("/")
    freeze_heap()  # the forks share these pages; no collection touches them (copy-on-write stays shared)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    listener.bind(str(staging))
    listener.listen(64)
    os.replace(staging, path)  # ready: clients connect from now on
    mine = path.stat().st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the connection handlers are reaped as they end
    listener.settimeout(min(idle, 10.0))
    last = time.monotonic()
    while True:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            if time.monotonic() - last >= idle or _inode(path) != mine:
                break
            continue
        last = time.monotonic()
        if os.fork() == 0:
            listener.close()
            lock.close()
            request = _handle(connection)  # returns in the fork that runs the stage
            _become_stage(request)
            return
        connection.close()
    if _inode(path) == mine:
        path.unlink(missing_ok=True)
    lock.truncate(0)  # no pid: nothing serves here (the file stays: a lock is only safe on a file that stays)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _handle(connection: socket.socket) -> dict:
    """One connection: read the request, fork the stage's process (which returns from here), pass signals to it,
    and answer with how it ended. The handler itself never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, len(STDIO))
    while len(data) < 8 or len(data) < 8 + int.from_bytes(data[:8], "big"):
        chunk = connection.recv(1 << 20)
        if not chunk:
            # os._exit, private by its name: the handler ends without the interpreter's shutdown, whose atexit
            # hooks and heap are the server's (so below too).
            os._exit(1)
        data += chunk
    request = json.loads(data[8:])
    request["fd_map"] = dict(zip(request["fds"], fds, strict=True))
    stage = os.fork()
    if stage == 0:
        os.setpgid(0, 0)
        connection.close()
        return request
    for fd in fds:
        os.close(fd)
    connection.sendall(f"started {stage}\n".encode())
    _watch(connection, stage)
    # os._exit (private by its name), as above
    os._exit(0)


def _watch(connection: socket.socket, stage: int) -> None:
    """Until the stage's process ends: pass the client's signals on to its process group, and stop it if the
    client goes away. Then send the client its exit status, or the signal that ended it."""
    connection.settimeout(0.02)
    pending, gone_since = b"", None
    while True:
        finished, status = os.waitpid(stage, os.WNOHANG)
        if finished:
            break
        if gone_since is None:
            try:
                chunk = connection.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                gone_since = time.monotonic()
                _signal_group(stage, signal.SIGTERM)
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _signal_group(stage, int(line.split()[1]))
        else:
            if time.monotonic() - gone_since > 10:
                _signal_group(stage, signal.SIGKILL)
            time.sleep(0.02)
    answer = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
    try:
        connection.sendall(f"{answer}\n".encode())
    except OSError:
        pass


def _signal_group(stage: int, number: int) -> None:
    try:
        os.killpg(stage, number)
    except ProcessLookupError:
        pass


def _become_stage(request: dict) -> None:
    """Make this fork the stage's process: its streams, folder, environment, umask and argv; the project's modules
    forgotten, so the stage imports them from its own folder as they are now; fresh random seeds."""
    mark_forked()
    null = os.open(os.devnull, os.O_RDWR)
    for target in STDIO:
        source = request["fd_map"].get(target, null)
        os.dup2(source, target)
    for fd in {*request["fd_map"].values(), null}:
        if fd not in STDIO:
            os.close(fd)
    _reopen_stdio()
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[WARM_CLIENT] = str(request["client"])
    sys.argv = request["argv"]
    for name in [name for name in sys.modules if name.partition(".")[0] == "transfer"
                 and name not in (__name__, "transfer.warm")]:
        del sys.modules[name]
    import random

    import numpy as np

    random.seed()
    np.random.seed()
    import runpy

    if request.get("module"):  # python -m: the caller's whole sys.path, its working folder first
        sys.path[:] = request["path"]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(request["script"])
        runpy.run_path(request["script"], run_name="__main__")


def _reopen_stdio() -> None:
    import io

    def stream(fd: int, mode: str, errors: str, line_buffering: bool):
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding=sys.__stdout__.encoding if sys.__stdout__ else "utf-8",
                                errors=errors, line_buffering=line_buffering)

    sys.stdin = sys.__stdin__ = stream(0, "r", "strict", False)
    sys.stdout = sys.__stdout__ = stream(1, "w", "strict", os.isatty(1))
    sys.stderr = sys.__stderr__ = stream(2, "w", "backslashreplace", True)
