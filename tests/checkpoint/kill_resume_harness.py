"""One kill-and-resume harness for every training integration (tests/checkpoint/test_kill_and_resume.py).

A training script under test speaks one protocol: ``python SCRIPT [VARIANT] ROLE OUT_DIR`` with
``CAIRN_TRACKING_URI`` set, where ROLE is

* ``reference``: train uninterrupted;
* ``crash``: train, and once a checkpoint is committed in the run and a few later points are flushed to
  the store, print ``KILL_ME <run id>`` and wait (the harness sends SIGKILL);
* ``resume``: read a run id from stdin (so it can be started early, its imports done while the others
  train), resume that run from its checkpoint and train to the end.

Every role that finishes writes ``OUT_DIR/final.safetensors`` (the model's state dict),
``OUT_DIR/run_id.txt`` and, when it has something to report, ``OUT_DIR/report.json``.

:func:`kill_and_resume` starts the crash and the resume processes, runs the reference meanwhile (in this
process, as ``__main__`` through runpy, with the global state it changes put back; in a subprocess too if
a case asks), kills the crash, resumes, and asserts what every integration must give: final weights
bit-identical to the reference's, one run (same id, FINISHED) whose curves hold each logged step exactly
once with the reference's values, and the dead process's points after the checkpoint kept but flagged
superseded. What is particular to an integration is checked by the caller on the returned result.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import cairn
from cairn.tracking.entities import Run

KILL_MARKER = "KILL_ME"
_START_TIMEOUT = 240.0  # seconds for the crash role to reach its kill point
_FINISH_TIMEOUT = 300.0


@dataclass(frozen=True)
class KillResumeCase:
    """One training script and what its history must look like.

    Attributes:
        name: test id.
        command: the script and its variant, before ROLE and OUT_DIR.
        metric_keys: curves that must equal the reference's step for step (the first one is also checked
            for the dead process's points).
        steps: the steps each curve of ``metric_keys`` has in a full run, in order.
        dead_steps: the steps of the first curve the crashed process had logged when it was killed.
        superseded_steps: the dead process's steps after the resumed checkpoint (kept, flagged superseded).
        kill_marker: the line (or first word of the line, then followed by the run id) the crash role
            prints at its kill point; without a run id on it, the run is the only one in the store.
        ready_for_kill: polled with (store, run id) after the kill marker until true (e.g. an upload the
            script cannot wait for).
        after_kill: checks of the store at (store, run id) once the crashed process is dead, before the resume.
        reference_in_process: run the reference in this process (saves an interpreter and its imports).
    """

    name: str
    command: Sequence[str]
    metric_keys: tuple[str, ...]
    steps: tuple[int, ...]
    dead_steps: tuple[int, ...]
    superseded_steps: tuple[int, ...]
    kill_marker: str = KILL_MARKER
    ready_for_kill: Callable[[str, str], bool] | None = None
    after_kill: Callable[[str, str], None] | None = None
    reference_in_process: bool = True


@dataclass
class KillResumeResult:
    """What :func:`kill_and_resume` ran, for the caller's integration-specific checks."""

    store: str
    run_id: str
    reference_store: str
    reference_run_id: str
    crash_output: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    resumed_dir: Path = Path()
    reference_dir: Path = Path()


def _launch(case: KillResumeCase, role: str, out: Path, store: str) -> subprocess.Popen[str]:
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "PL_"))}
    env.update(CAIRN_TRACKING_URI=store, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, *case.command, role, str(out)],
        cwd=out,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextlib.contextmanager
def _restored_globals() -> Iterator[None]:
    """Put back what a training script run in this process changes: torch's threads and determinism, the
    environment, argv, warning filters, gc freezing and plain-PyTorch autolog."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    environ, argv = dict(os.environ), list(sys.argv)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        autolog = sys.modules.get("cairn.autolog.pytorch")
        if autolog is not None:
            autolog.autolog(disable=True)
        gc.unfreeze()
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        os.environ.clear()
        os.environ.update(environ)
        sys.argv = argv


def _reference_in_process(case: KillResumeCase, out: Path, store: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    script, *variant = case.command
    with _restored_globals():
        cairn.set_tracking_uri(store)
        sys.argv = [script, *variant, "reference", str(out)]
        runpy.run_path(script, run_name="__main__")


def _run_until_kill_marker(proc: subprocess.Popen[str], marker: str) -> tuple[str | None, list[str]]:
    """Read the crash role's output up to ``marker`` (and the run id after it, if any); a watchdog kills a
    script that never gets there."""
    reached = threading.Event()

    def watchdog() -> None:
        if not reached.wait(_START_TIMEOUT):
            proc.kill()

    threading.Thread(target=watchdog, daemon=True).start()
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        words = line.split()
        if words and words[0] == marker:
            reached.set()
            return (words[1] if len(words) > 1 else None), lines
    proc.wait(timeout=30)
    output = "\n".join(lines)
    raise AssertionError(f"the crash role ended without printing {marker}:\n{output[-4000:]}")


def _run_ids(store: str) -> list[str]:
    """Ids of every run in the store."""
    cairn.set_tracking_uri(store)
    runs: list[Run] = cairn.search_runs(output_format="list", search_all_experiments=True)  # type: ignore[assignment]
    return [run.info.run_id for run in runs]


def _only_run(store: str) -> str:
    [run_id] = _run_ids(store)
    return run_id


def _finish(proc: subprocess.Popen[str], stdin: str = "") -> str:
    output, _ = proc.communicate(stdin, timeout=_FINISH_TIMEOUT)
    assert proc.returncode == 0, output[-4000:]
    return output


def _curve(client: cairn.Client, run_id: str, key: str, **kwargs: Any) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key, **kwargs)]


def assert_same_weights(resumed_dir: Path, reference_dir: Path) -> None:
    """Bit-identical state dicts: same keys, equal tensors, byte-equal files."""
    resumed_file, reference_file = resumed_dir / "final.safetensors", reference_dir / "final.safetensors"
    resumed, reference = load_file(str(resumed_file)), load_file(str(reference_file))
    assert resumed.keys() == reference.keys()
    different = [key for key in reference if not torch.equal(resumed[key], reference[key])]
    assert different == [], f"weights differ from the uninterrupted run: {different}"
    assert resumed_file.read_bytes() == reference_file.read_bytes()


def kill_and_resume(
    case: KillResumeCase, tmp_path: Path, *, store: str | None = None, superseded_view: str | None = None
) -> KillResumeResult:
    """Reference, crash + SIGKILL, resume; assert the shared guarantees (see the module docstring).

    Args:
        store: the tracking URI the crash and resume processes use (default: a new store under ``tmp_path``),
            e.g. a tracking server's ``http://`` URL.
        superseded_view: the URI the dead process's superseded points are read through (default: ``store``):
            a tracking server's own database, since MLflow's REST API does not show superseded points.
    """
    store, reference_store = store or str(tmp_path / "store"), str(tmp_path / "reference-store")
    resumed_dir, reference_dir = tmp_path / "resumed", tmp_path / "reference"
    crashing = _launch(case, "crash", resumed_dir, store)
    resuming = _launch(case, "resume", resumed_dir, store)  # imports while the others train
    reference = None if case.reference_in_process else _launch(case, "reference", reference_dir, reference_store)
    try:
        if reference is None:
            _reference_in_process(case, reference_dir, reference_store)
        marked_run_id, crash_output = _run_until_kill_marker(crashing, case.kill_marker)
        run_id = marked_run_id or _only_run(store)
        if case.ready_for_kill is not None:
            deadline = time.monotonic() + 60
            while not case.ready_for_kill(store, run_id):
                assert time.monotonic() < deadline, f"{case.name}: never ready to be killed"
                time.sleep(0.1)
        crashing.send_signal(signal.SIGKILL)
        crashing.wait(timeout=30)
        assert crashing.returncode == -signal.SIGKILL
        if reference is not None:
            _finish(reference)

        cairn.set_tracking_uri(store)
        client = cairn.Client()
        assert client.get_run(run_id).info.status.value == "RUNNING"  # nobody ended it
        first_key = case.metric_keys[0]
        assert [s for s, _ in _curve(client, run_id, first_key)] == list(case.dead_steps)
        if case.after_kill is not None:
            case.after_kill(store, run_id)

        _finish(resuming, f"{run_id}\n")
    finally:
        for proc in (crashing, reference, resuming):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)

    # 1. bit-identical final weights
    assert_same_weights(resumed_dir, reference_dir)
    # 2. the same run, continued and finished: the only run of its store
    assert (resumed_dir / "run_id.txt").read_text() == run_id
    assert _run_ids(store) == [run_id]
    client = cairn.Client()
    assert client.get_run(run_id).info.status.value == "FINISHED"
    # 3. each logged step exactly once, with the uninterrupted run's values
    reference_run_id = (reference_dir / "run_id.txt").read_text()
    cairn.set_tracking_uri(reference_store)
    want = {key: _curve(cairn.Client(), reference_run_id, key) for key in case.metric_keys}
    cairn.set_tracking_uri(store)
    for key in case.metric_keys:
        got = _curve(client, run_id, key)
        assert [s for s, _ in got] == list(case.steps), f"{case.name}/{key}: steps {[s for s, _ in got]}"
        assert got == want[key], f"{case.name}/{key} differs from the uninterrupted run"
    # 4. the dead process's points after the checkpoint are kept, flagged superseded, hidden
    view = cairn.Client(superseded_view) if superseded_view else client
    everything = sorted(s for s, _ in _curve(view, run_id, first_key, include_superseded=True))
    assert everything == sorted([*case.steps, *case.superseded_steps])

    report_file = resumed_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return KillResumeResult(
        store=store,
        run_id=run_id,
        reference_store=reference_store,
        reference_run_id=reference_run_id,
        crash_output=crash_output,
        report=report,
        resumed_dir=resumed_dir,
        reference_dir=reference_dir,
    )
