"""The warm stage server (transfer/warm.py): a stage handed over runs as its own process would, from the project's
code as it is now, with its argv, folder, environment, streams, exit status and signals; the server outlives its
stages, leaves nothing behind, idles out and stops on demand."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO
from transfer import warm

PROBE = '''
import atexit, json, os, sys
from pathlib import Path
import psutil
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warm_before = "tensorflow" in sys.modules
from transfer.warm import hand_over
hand_over(__name__, __file__)
import transfer.errors
from transfer.process import execution_id
atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({"pid": os.getpid(), "client": os.environ.get("TRANSFER_WARM_CLIENT"), "cwd": os.getcwd(),
                  "argv": sys.argv[1:], "probe": os.environ.get("PROBE"), "tf_at_start": "tensorflow" in sys.modules,
                  "marker": getattr(transfer.errors, "MARKER", None), "execution": execution_id(),
                  "umask": os.umask(0o022),
                  # the fork's parent is its connection's handler, whose parent is the server
                  "server": psutil.Process(os.getppid()).ppid() if "tensorflow" in sys.modules else None}),
      flush=True)
print("to stderr", file=sys.stderr)
action = sys.argv[1] if len(sys.argv) > 1 else "0"
if action == "sleep":
    Path(sys.argv[2]).write_text(str(os.getpid()))
    import time
    time.sleep(60)
if action == "raise":
    raise ValueError("boom")
sys.exit(int(action))
'''

# A package run by ``python -m probe_package``, as ``python -m transfer predict`` hands itself over.
PROBE_MODULE = '''
import json, os, sys
import psutil
from transfer.warm import hand_over
hand_over(__name__, __file__, module="probe_package")
import probe_package.helper
print(json.dumps({"tf_at_start": "tensorflow" in sys.modules, "argv": sys.argv, "cwd": os.getcwd(),
                  "path": sys.path, "helper": probe_package.helper.NAME,
                  "server": psutil.Process(os.getppid()).ppid() if "tensorflow" in sys.modules else None}),
      flush=True)
sys.exit(int(sys.argv[1]))
'''


@pytest.fixture(scope="module")
def project():
    """A copy of the package beside a probe script, and a private server folder (short: a socket's path must fit
    in 107 bytes); its servers are stopped at the end."""
    root = Path(tempfile.mkdtemp(prefix="warm-project-"))
    shutil.copytree(REPO / "transfer", root / "transfer", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "stages").mkdir()
    (root / "stages" / "probe.py").write_text(PROBE)
    (root / "probe_package").mkdir()
    (root / "probe_package" / "__init__.py").write_text("")
    (root / "probe_package" / "__main__.py").write_text(PROBE_MODULE)
    (root / "probe_package" / "helper.py").write_text("NAME = 'helper'\n")
    servers = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
    yield root, servers
    subprocess.run([sys.executable, "-m", "transfer.warm", "stop"], cwd=root, env=_env(servers), check=False,
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(servers, ignore_errors=True)


def _env(servers: Path, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRANSFER_WARM")}
    return {**env, "TRANSFER_WARM_DIR": str(servers), "TRANSFER_WARM_IDLE": "120", **extra}


def _probe(project, *args, cwd=None, **env):
    root, servers = project
    return subprocess.run([sys.executable, "stages/probe.py", *args], cwd=cwd or root, env=_env(servers, **env),
                          capture_output=True, text=True, timeout=240)


def _facts(result) -> dict:
    return json.loads(result.stdout.splitlines()[0])


def _server_pids(servers: Path) -> list[int]:
    """The servers alive in ``servers`` (a stopped one's lock file may still name it)."""
    pids = [int(path.read_text().split()[0]) for path in servers.glob("*.lock") if path.read_text().strip()]
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_a_stage_runs_in_a_fork_with_its_own_argv_folder_environment_and_streams(project, tmp_path):
    root, servers = project
    script = root / "stages" / "probe.py"
    result = subprocess.Popen([sys.executable, str(script), "3", "extra"], cwd=tmp_path,
                              env=_env(servers, PROBE="seen"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    out, err = result.communicate(timeout=240)
    assert result.returncode == 3, err
    facts = json.loads(out.splitlines()[0])
    assert facts["tf_at_start"], "the stage started with TensorFlow imported: it ran in the server's fork"
    assert facts["client"] == str(result.pid) and facts["pid"] != result.pid
    assert facts["cwd"] == str(tmp_path) and facts["argv"] == ["3", "extra"] and facts["probe"] == "seen"
    assert facts["umask"] == _umask()
    assert out.splitlines()[1:] == ["atexit ran"], "its own exit: atexit hooks run once, in the stage's process"
    assert err == "to stderr\n"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_errors_and_exit_statuses_pass_through(project):
    raised = _probe(project, "raise")
    assert raised.returncode == 1 and raised.stderr.rstrip().endswith("ValueError: boom"), raised.stderr
    assert _probe(project, "0").returncode == 0


@pytest.mark.parametrize("switch", ["0", "false", "off"])
def test_the_off_switch_runs_the_stage_in_its_own_process(project, switch):
    result = _probe(project, "0", TRANSFER_WARM=switch)
    facts = _facts(result)
    assert not facts["tf_at_start"] and facts["client"] is None
    assert result.stderr == "to stderr\n"


def test_a_bad_idle_time_is_named_and_the_stage_runs_here(project):
    result = _probe(project, "0", TRANSFER_WARM_IDLE="soon")
    assert result.returncode == 0 and not _facts(result)["tf_at_start"]
    assert "TRANSFER_WARM_IDLE = 'soon' is invalid: expected the seconds a stage server waits" in result.stderr


def test_the_stage_runs_the_projects_code_as_it_is_now(project):
    root, servers = project
    first = _probe(project, "0")
    assert _facts(first)["marker"] is None
    errors = root / "transfer" / "errors.py"
    original = errors.read_text()
    try:
        errors.write_text(original + "\nMARKER = 'edited'\n")
        second = _probe(project, "0")
    finally:
        errors.write_text(original)
    assert _facts(second)["marker"] == "edited" and _facts(second)["tf_at_start"]
    assert _facts(second)["server"] == _facts(first)["server"], "an edit outside the server's modules keeps it"


def test_the_execution_is_the_dvc_process_above_the_caller(project, tmp_path):
    """transfer.process.execution_id walks up from the process that handed the stage over, not from the fork."""
    root, servers = project
    wrapper = tmp_path / "dvc"  # what execution_id looks for among the caller's ancestors
    wrapper.write_text(f"#!/bin/sh\n{sys.executable} stages/probe.py 0\n")
    wrapper.chmod(0o755)
    shell = subprocess.Popen(["/bin/sh", str(tmp_path / "dvc")], cwd=root, env=_env(servers), stdout=subprocess.PIPE,
                             text=True)
    out, _ = shell.communicate(timeout=240)
    facts = json.loads(out.splitlines()[0])
    execution = facts["execution"]
    assert facts["tf_at_start"] and execution is not None and execution.startswith(f"{shell.pid}-"), execution


def test_signals_reach_the_stage_and_a_caller_that_dies_takes_it_along(project, tmp_path):
    root, servers = project
    for number in (signal.SIGINT, signal.SIGKILL):
        marker = tmp_path / f"pid{number}"
        client = subprocess.Popen([sys.executable, "stages/probe.py", "sleep", str(marker)], cwd=root,
                                  env=_env(servers), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        stage = int(marker.read_text())
        assert psutil.pid_exists(stage)
        client.send_signal(number)
        _, err = client.communicate(timeout=60)
        assert client.returncode == -number
        if number == signal.SIGINT:
            assert "KeyboardInterrupt" in err, "the stage got the signal, as its own process would"
        deadline = time.time() + 20
        while psutil.pid_exists(stage) and psutil.Process(stage).status() != psutil.STATUS_ZOMBIE:
            assert time.time() < deadline, "the stage outlived its caller"
            time.sleep(0.05)


def test_the_server_outlives_its_stages_and_leaves_no_process_behind(project):
    pid = _facts(_probe(project, "0"))["server"]
    assert pid in _server_pids(project[1])
    assert _facts(_probe(project, "0"))["server"] == pid
    deadline = time.time() + 10
    # Each stage's handler ends right after its stage, by os._exit: without the server's atexit hooks, which would
    # have printed or hung here, and without returning into the server's loop.
    while psutil.Process(pid).children():
        assert time.time() < deadline, psutil.Process(pid).children()
        time.sleep(0.05)


def test_another_environment_gets_another_server_and_an_idle_one_exits(project):
    root, servers = project
    assert _probe(project, "0").returncode == 0
    before = set(servers.glob("*.sock"))
    other = _probe(project, "0", TF_WARM_TEST="1", TRANSFER_WARM_IDLE="1")
    assert _facts(other)["tf_at_start"]
    (new,) = set(servers.glob("*.sock")) - before
    deadline = time.time() + 30
    while new.exists():
        assert time.time() < deadline, "an idle server exits and takes its socket along"
        time.sleep(0.2)


def test_copies_of_the_project_share_a_server(project, tmp_path):
    root, servers = project
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _probe(project, "0").returncode == 0
    before = sorted(servers.glob("*.sock"))
    result = _probe(project, "0", cwd=copy)
    assert _facts(result)["tf_at_start"] and sorted(servers.glob("*.sock")) == before


def test_the_key_ignores_what_the_import_never_reads(monkeypatch):
    package = REPO / "transfer"
    script = str(REPO / "stages" / "evaluate.py")
    key = warm.environment_key(package, script)
    monkeypatch.setenv("DVC_EXP_NAME", "anything")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///elsewhere")
    assert warm.environment_key(package, script) == key
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert warm.environment_key(package, script) != key


def test_stop_ends_every_server_and_a_shared_folder_is_refused(project, tmp_path):
    root, servers = project
    pid = _facts(_probe(project, "0"))["server"]
    stopped = subprocess.run([sys.executable, "-m", "transfer.warm", "stop"], cwd=root, env=_env(servers),
                             capture_output=True, text=True, check=True)
    assert f"stopped: pid {pid}," in stopped.stdout
    psutil.wait_procs([psutil.Process(pid)], timeout=20)
    assert pid not in _server_pids(servers) and not list(servers.glob("*.sock"))
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    result = _probe(project, "0", TRANSFER_WARM_DIR=str(shared))
    assert result.returncode == 0 and not _facts(result)["tf_at_start"]
    assert "must belong to this user and be private" in result.stderr


def test_a_module_run_with_dash_m_runs_in_a_fork_with_its_own_path_and_argv(project, tmp_path):
    """``python -m package`` handed over: the fork runs the package's __main__ with the caller's sys.path and
    argv; the folder ``-m`` puts first (the working one, whose files change) stays out of the server's key."""
    root, servers = project
    stage_server = _facts(_probe(project, "0"))["server"]
    facts = []
    for run in range(2):
        (tmp_path / f"written{run}.csv").write_text("a file the last run left in the working folder\n")
        result = subprocess.run([sys.executable, "-m", "probe_package", "4", "more"], cwd=tmp_path,
                                env=_env(servers, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=240)
        assert result.returncode == 4, result.stderr
        facts.append(_facts(result))
    assert facts[0]["tf_at_start"] and facts[0]["helper"] == "helper"
    assert facts[0]["argv"] == [str(root / "probe_package" / "__main__.py"), "4", "more"]
    assert facts[0]["cwd"] == str(tmp_path) and facts[0]["path"][:2] == [str(tmp_path), str(root)]
    assert facts[1]["server"] == facts[0]["server"], "the working folder's changes keep the server"
    assert facts[0]["server"] != stage_server, "PYTHONPATH is part of the key"
    from_root = subprocess.run([sys.executable, "-m", "probe_package", "0"], cwd=root, env=_env(servers),
                               capture_output=True, text=True, timeout=240)
    assert _facts(from_root)["tf_at_start"] and _facts(from_root)["server"] == stage_server, \
        "run from the project, it shares the stages' server"
