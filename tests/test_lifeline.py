"""torchrun workers die with their launcher: SIGKILL the ``torchrun`` parent, and no worker may survive it.

The workers are a tiny script that calls :func:`helpers.machinery.lifeline.watch_launcher`,
as ``python -m helpers`` does first under torchrun, and then sleeps: the test
costs a torchrun start, not a training run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from helpers import config
from helpers.machinery import cli, lifeline

TORCHRUN = Path(sys.executable).with_name("torchrun")
WORKER = textwrap.dedent("""\
    import importlib.util, os, sys, time
    spec = importlib.util.spec_from_file_location("lifeline", {module!r})  # without torch: a cheap worker
    lifeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lifeline)
    if os.environ.get("LIFELINE_NO_PRCTL"):  # as on a platform without Linux's parent-death signal
        lifeline._parent_death_signal = lambda sig: False
    how = lifeline.watch_launcher() if lifeline.is_torchrun_worker() else "none"
    ready = os.path.join(sys.argv[1], "ready-" + os.environ["LOCAL_RANK"])
    with open(ready + ".tmp", "w") as handle:
        handle.write(f"{{os.getpid()}} {{os.getppid()}} {{how}}")
    os.replace(ready + ".tmp", ready)
    time.sleep(120)
""")


def alive(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_sigkill_of_torchrun_stops_both_workers(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(module=lifeline.__file__), encoding="utf-8")
    log = tmp_path / "torchrun.log"
    with open(log, "w") as output:
        launcher = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
                                    cwd=config.REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
    ready = [tmp_path / f"ready-{rank}" for rank in (0, 1)]
    workers = []
    try:
        assert wait_for(lambda: all(p.exists() for p in ready), 120), log.read_text()
        records = [p.read_text().split() for p in ready]
        workers = [psutil.Process(int(pid)) for pid, _, _ in records]
        assert {int(parent) for _, parent, _ in records} == {launcher.pid}    # torchrun's agent is the parent
        assert {how for _, _, how in records} == {"prctl" if sys.platform.startswith("linux") else "polling"}
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        assert wait_for(lambda: not any(alive(w) for w in workers), 10), "workers outlived their torchrun"
        text = log.read_text()
        assert text.count(f"its launcher (pid {launcher.pid}) is gone; stopping") == 2, text
    finally:  # whatever failed, leave no process behind
        if launcher.poll() is None:
            workers += psutil.Process(launcher.pid).children(recursive=True)
            launcher.kill()
            launcher.wait()
        for process in workers:
            if alive(process):
                process.kill()


def test_without_prctl_a_polling_thread_stops_the_orphan(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(module=lifeline.__file__), encoding="utf-8")
    log = tmp_path / "worker.log"
    start_one = ("import os, subprocess, sys, time; "
                 "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], stdout=open(sys.argv[3], 'w'), "
                 "stderr=subprocess.STDOUT, env={**os.environ, 'LOCAL_RANK': '0', 'LIFELINE_NO_PRCTL': '1'}); "
                 "time.sleep(120)")
    launcher = subprocess.Popen([sys.executable, "-c", start_one, str(script), str(tmp_path), str(log)])
    worker = None
    try:
        assert wait_for(lambda: (tmp_path / "ready-0").exists(), 60)
        pid, parent, how = (tmp_path / "ready-0").read_text().split()
        worker = psutil.Process(int(pid))
        assert (int(parent), how) == (launcher.pid, "polling")
        launcher.kill()
        launcher.wait()
        assert wait_for(lambda: not alive(worker), 10), "the worker outlived its launcher"
        assert f"its launcher (pid {launcher.pid}) is gone; stopping" in log.read_text()
    finally:
        launcher.kill()
        launcher.wait()
        if worker is not None and alive(worker):
            worker.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_sigterm_from_a_living_launcher_keeps_its_usual_effect(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(module=lifeline.__file__), encoding="utf-8")
    with open(tmp_path / "worker.log", "w") as output:      # this test's process is the launcher
        worker = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=output,
                                  stderr=subprocess.STDOUT, env={**os.environ, "LOCAL_RANK": "0"})
    try:
        assert wait_for(lambda: (tmp_path / "ready-0").exists(), 60)
        assert (tmp_path / "ready-0").read_text().split()[2] == "prctl"
        worker.terminate()
        assert worker.wait(timeout=10) == -signal.SIGTERM     # killed by the signal, as without the handler
        assert "is gone" not in (tmp_path / "worker.log").read_text()
    finally:
        worker.kill()
        worker.wait()


def test_the_command_line_watches_its_launcher_under_torchrun(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lifeline, "watch_launcher", lambda: calls.append("watched") or "polling")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["train-retrieval", "--help"])
    assert calls == []                                      # a plain process watches nothing
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(SystemExit):
        cli.main(["train-retrieval", "--help"])
    assert calls == ["watched"]                             # first thing, before the arguments are read
    capsys.readouterr()
