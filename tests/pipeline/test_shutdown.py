"""The long-running processes stop cleanly: `python -m flows.serve` and `python -m qinstack.worker`, started
against a Prefect server with a qin-train run in flight, exit within 10 s of SIGTERM (or of SIGINT sent to
the process alone, as `kill -INT` or a supervisor sends it), and the run they were running has its final
state by then, not Running: Cancelled (serve cancels it) or Crashed (the worker's flow-run process is
terminated). Each test really starts the process, in the scratch project as working directory. And the one
SIGTERM, grace, SIGKILL sequence (flows.shutdown.stop_processes) on processes that obey and that do not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psutil
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 10.0
START_WITHIN_S = 90.0  # process start, deployment, flow-run process start: tens of seconds on 2 busy cores
# Still training when the signal arrives: tiny data trains an epoch in about 0.1 s and stops early otherwise.
LONG_RUN = {"overrides": {"train.epochs": 400, "train.patience": 400}}

T = TypeVar("T")


def _env(project: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(project / ".prefect"),
        "PYTHONPATH": str(REPO),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }


def _as_from_a_terminal() -> None:
    """SIGINT handled by default, as a process a terminal or a supervisor starts has it. A test run started
    in the background (`cmd &`) ignores SIGINT, and the processes keep an ignored SIGINT ignored by design."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def _started(module: str, *args: str, project: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m module args` in `project`, its output in project/<module>.log; killed (with everything it
    started) on the way out, whatever the test did."""
    log = (project / f"{module}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=project,
        env=_env(project),
        stdout=log,
        stderr=log,
        preexec_fn=_as_from_a_terminal,
    )
    started: list[psutil.Process] = []
    try:
        yield proc
    finally:
        if proc.poll() is None:
            started = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
        for process in started:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        proc.wait()
        log.close()


def _poll(what: str, check: Callable[[], T | None], proc: subprocess.Popen[bytes], project: Path) -> T:
    """The first truthy `check()`, polled until START_WITHIN_S; fails with the process's log if it exits."""
    deadline = time.monotonic() + START_WITHIN_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{_log(project)}")
        time.sleep(0.3)
    pytest.fail(f"{what}: not within {START_WITHIN_S:.0f} s\n{_log(project)}")


def _log(project: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in project.glob("*.log"))


def _deployment(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _run_in_flight(client: Any, name: str, proc: subprocess.Popen[bytes], project: Path) -> UUID:
    """A run of deployment `name`, once it is Running."""
    deployment = _poll(f"deployment {name} exists", lambda: _deployment(client, name), proc, project)
    flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=LONG_RUN)
    _poll(
        "the flow run is Running", lambda: client.read_flow_run(flow_run.id).state.is_running(), proc, project
    )
    return flow_run.id


def _stop(proc: subprocess.Popen[bytes], signum: int, project: Path) -> float:
    """Send `signum` to the process alone; the seconds it took to exit, which must be cleanly (0)."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=EXIT_WITHIN_S + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"still running {EXIT_WITHIN_S + 5:.0f} s after {signal.Signals(signum).name}\n{_log(project)}"
        )
    elapsed = time.monotonic() - sent
    assert code == 0, (
        f"exit code {code} (not a clean stop: {128 + signum} is the forced exit)\n{_log(project)}"
    )
    return elapsed


def _assert_concurrency_policy(deployment: Any) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    # The project's params.yaml has no `deploy` section: the defaults, limit 2 and ENQUEUE.
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 2
    assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_cancels_its_run_and_exits_on_a_signal(
    project: Path, prefect_harness: None, signum: int
) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    with _started("flows.serve", project=project) as proc, get_client(sync_client=True) as client:
        flow_run = _run_in_flight(client, "qin-train/local", proc, project)
        _assert_concurrency_policy(client.read_deployment_by_name("qin-train/local"))
        elapsed = _stop(proc, signum, project)
        state = client.read_flow_run(flow_run).state

    assert elapsed < EXIT_WITHIN_S, f"exited {elapsed:.1f} s after the signal"
    # Read as the process exited: the run was given its final state before, not later by someone else.
    assert state.type == StateType.CANCELLED, f"{state.type}: {state.message}\n{_log(project)}"


def test_worker_crashes_its_run_and_exits_on_sigterm(project: Path, prefect_harness: None) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType

    from flows.deploy_pool import deploy

    # The deployment's runs start in its root: the project, with the repository's flows/ in it.
    (project / "flows").symlink_to(REPO / "flows", target_is_directory=True)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="qin-test-pool", type="process"))
    deploy("qin-test-pool", "test-pool", root=project)

    with (
        _started("qinstack.worker", "--pool", "qin-test-pool", project=project) as proc,
        get_client(sync_client=True) as client,
    ):
        flow_run = _run_in_flight(client, "qin-train/test-pool", proc, project)
        _assert_concurrency_policy(client.read_deployment_by_name("qin-train/test-pool"))
        elapsed = _stop(proc, signal.SIGTERM, project)
        state = client.read_flow_run(flow_run).state

    assert elapsed < EXIT_WITHIN_S, f"exited {elapsed:.1f} s after the signal"
    assert state.type == StateType.CRASHED, f"{state.type}: {state.message}\n{_log(project)}"


# Python 3.11 wraps an error raised in `__set_name__` (functools.cached_property has one) in RuntimeError: a
# SIGTERM that lands while a class is created, in an import, comes back so. Here, at the flow's first import.
SIGNAL_IN_AN_IMPORT = """
import importlib.abc, sys
from prefect.exceptions import TerminationSignal

class SignalDuringImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "flows.tracking":
            try:
                raise TerminationSignal(15)
            except TerminationSignal as exc:
                raise RuntimeError("Error calling __set_name__ on 'cached_property' instance") from exc

sys.meta_path.insert(0, SignalDuringImport())
from flows.qin_train import qin_train
qin_train.with_options(flow_run_name=sys.argv[1])()
"""


def test_a_signal_during_an_import_crashes_the_run_not_fails_it(project: Path, prefect_harness: None) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.objects import StateType

    name = f"signal-in-an-import-{os.getpid()}"
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_AN_IMPORT, name],
        cwd=project,
        env=_env(project),
        capture_output=True,
        timeout=START_WITHIN_S,
    )
    named = FlowRunFilter(name=FlowRunFilterName(any_=[name]))
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(flow_run_filter=named)
    output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
    assert flow_run.state.type == StateType.CRASHED, f"{flow_run.state.message}\n{output}"
    assert "termination signal" in flow_run.state.message


def test_a_stage_task_does_not_retry_a_wrapped_signal() -> None:
    from prefect.exceptions import TerminationSignal
    from prefect.states import Failed

    from flows.stages import retry_on_io_only

    try:
        raise TerminationSignal(15)
    except TerminationSignal as signal_raised:
        wrapped = RuntimeError("Error calling __set_name__")
        wrapped.__cause__ = signal_raised
    assert retry_on_io_only(None, None, Failed(data=wrapped)) is False
    assert retry_on_io_only(None, None, Failed(data=OSError("disk busy"))) is True


# A process that ignores SIGTERM (as do the children it starts: an ignored signal stays ignored across
# fork and exec), says so, then sleeps.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _stubborn(**popen: Any) -> tuple[subprocess.Popen[str], psutil.Process]:
    """A STUBBORN process and its child, once both ignore SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, **popen)
    assert proc.stdout is not None
    return proc, psutil.Process(int(proc.stdout.readline()))


def _gone(process: psutil.Process) -> bool:
    """Whether `process` (not a child of this one: its exit is not ours to wait for) has ended, within 5 s."""
    from flows.shutdown import running

    deadline = time.monotonic() + 5
    while running(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(process)


def test_stop_processes_gives_sigterm_its_grace_and_never_reaps() -> None:
    from flows.shutdown import stop_processes

    proc = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(120)"],
                            stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline()  # started: Python's SIGTERM default applies
    started = time.monotonic()
    assert stop_processes([psutil.Process(proc.pid)], grace_s=30) == []
    assert time.monotonic() - started < 10, "waited out the grace period for a process that had exited"
    # Not reaped: its parent still learns how it ended.
    assert proc.wait(5) == -signal.SIGTERM


def test_stop_processes_kills_what_outlives_the_grace_period_and_what_it_started() -> None:
    from flows.shutdown import stop_processes

    proc, child = _stubborn()
    started = time.monotonic()
    killed = stop_processes([psutil.Process(proc.pid)], grace_s=1.0)
    assert [p.pid for p in killed] == [proc.pid]
    assert time.monotonic() - started >= 1.0
    assert proc.wait(5) == -signal.SIGKILL
    assert _gone(child), "the process it had started outlived it"


def test_stop_processes_signals_a_whole_process_group() -> None:
    from flows.shutdown import stop_processes

    proc, child = _stubborn(start_new_session=True)
    assert os.getpgid(child.pid) == proc.pid
    assert [p.pid for p in stop_processes([psutil.Process(proc.pid)], grace_s=0.5, group=True)] == [proc.pid]
    assert proc.wait(5) == -signal.SIGKILL
    assert _gone(child), "a process of its group outlived it"


def test_stop_processes_sends_sigterm_to_the_whole_group() -> None:
    from flows.shutdown import stop_processes

    starts_one = STUBBORN.replace("signal.signal(signal.SIGTERM, signal.SIG_IGN)", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", starts_one], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    child = psutil.Process(int(proc.stdout.readline()))
    assert stop_processes([psutil.Process(proc.pid)], grace_s=30, group=True) == []
    assert proc.wait(5) == -signal.SIGTERM
    assert _gone(child), "SIGTERM reached the leader of the group only"
