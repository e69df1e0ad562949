"""``cairn run``: the command, its child's environment, and the teeing of its output into the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console

from cairn.errors import CairnError

err_console = Console(stderr=True)


def _client(ctx: click.Context) -> Any:
    from cairn.tracking.client import Client

    return Client(ctx.obj.get("store"), ctx.obj.get("artifact_root"))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--experiment",
    "--experiment-name",
    "-e",
    "experiment",
    help="Experiment name (created if missing). Default: CAIRN_EXPERIMENT_ID, else CAIRN_EXPERIMENT_NAME, else 0.",
)
@click.option("--experiment-id", help="Experiment id (must exist).")
@click.option("--run-name", "-n", help="Name of the run.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    experiment: str | None,
    experiment_id: str | None,
    run_name: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND inside a new run: `cairn run -e demo -- python train.py --lr 0.1`.

    The child logs into the run through CAIRN_RUN_ID (and MLFLOW_RUN_ID / MLFLOW_EXPERIMENT_ID for
    MLflow code; MLFLOW_TRACKING_URI only when the store is an http(s) server, which MLflow can reach);
    its output is saved as the run's stdout.txt/stderr.txt artifacts, and the exit code decides FINISHED
    or FAILED (KILLED for a signal). A command that cannot start ends the run FAILED with exit code 127
    (not found) or 126 (not executable).
    """
    from cairn.tracking import config

    if experiment and experiment_id:
        raise click.UsageError("give --experiment/--experiment-name or --experiment-id, not both", ctx)
    client = _client(ctx)
    if not experiment and not experiment_id:
        experiment_id = os.environ.get("CAIRN_EXPERIMENT_ID") or None
        experiment = None if experiment_id else (os.environ.get("CAIRN_EXPERIMENT_NAME") or None)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    elif experiment_id:
        experiment_id = client.get_experiment(experiment_id).experiment_id
    else:
        experiment_id = "0"
    run_obj = client.create_run(experiment_id, run_name=run_name, tags={"cairn.command": " ".join(command)})
    run_id = run_obj.info.run_id
    err_console.print(f"[dim]cairn: run {run_id} ({run_obj.info.run_name}) in experiment {experiment_id}[/dim]")
    uri = config.resolve_tracking_uri(ctx.obj["store"]) if ctx.obj.get("store") else config.get_tracking_uri()
    env = _child_environment(uri, ctx.obj.get("artifact_root"), run_id, experiment_id, base=os.environ)
    status, code = "FAILED", 1
    try:  # whatever happens (cannot start, Ctrl-C, an upload error), the run does not stay RUNNING
        with tempfile.TemporaryDirectory(prefix="cairn-run-") as tmp:
            try:
                code = _run_teed(list(command), env, Path(tmp))
            except _CannotStart as exc:
                code = exc.exit_code
                err_console.print(f"[red]error:[/red] {exc}", highlight=False)
                (Path(tmp) / "stdout.txt").write_text("")
                (Path(tmp) / "stderr.txt").write_text(f"cairn run: {exc}\n")
            for name in ("stdout.txt", "stderr.txt"):
                client.log_artifact(run_id, Path(tmp) / name)
        status = "FINISHED" if code == 0 else ("KILLED" if code < 0 else "FAILED")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)
        err_console.print(f"[dim]cairn: run {run_id} ended {status} (exit code {code})[/dim]")
    sys.exit(code if code >= 0 else 128 - code)


def _child_environment(
    tracking_uri: str, artifact_root: str | None, run_id: str, experiment_id: str, *, base: Any
) -> dict[str, str]:
    """The environment of `cairn run`'s child: cairn's variables and the MLflow ones MLflow code reads.

    ``MLFLOW_TRACKING_URI`` is set only for an http(s) server (MLflow speaks its REST API); MLflow must
    never be pointed at cairn's own database, so for other stores the caller's value (if any) is kept.
    """
    env = dict(base)
    env.update(
        CAIRN_RUN_ID=run_id,
        CAIRN_EXPERIMENT_ID=experiment_id,
        CAIRN_TRACKING_URI=tracking_uri,
        MLFLOW_RUN_ID=run_id,
        MLFLOW_EXPERIMENT_ID=experiment_id,
    )
    if tracking_uri.lower().startswith(("http://", "https://")):
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if artifact_root:
        env["CAIRN_ARTIFACT_ROOT"] = artifact_root
    return env


class _CannotStart(CairnError):
    """The command of `cairn run` could not be started; ``exit_code`` follows the shell (127, 126)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _run_teed(command: list[str], env: dict[str, str], directory: Path) -> int:
    """Start the child, copy its output to our stdout/stderr and to files; forward SIGINT/SIGTERM."""
    try:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        raise _CannotStart(f"cannot start {command[0]!r}: {exc.strerror or exc}", code) from exc

    def pump(source: IO[bytes], sink: IO[bytes], path: Path) -> None:
        with path.open("wb") as copy:
            for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
                sink.write(chunk)
                sink.flush()
                copy.write(chunk)

    assert child.stdout is not None and child.stderr is not None
    pumps = [
        threading.Thread(target=pump, args=(child.stdout, sys.stdout.buffer, directory / "stdout.txt")),
        threading.Thread(target=pump, args=(child.stderr, sys.stderr.buffer, directory / "stderr.txt")),
    ]
    for thread in pumps:
        thread.start()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for thread in pumps:
            thread.join()
    return code
