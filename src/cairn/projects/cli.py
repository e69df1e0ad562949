"""``cairn run``: a command, or an MLflow Project's entry point (mlproject.py), inside a new run.

The child's environment, the teeing of its output into the run, and its exit status as the run's.
"""

from __future__ import annotations

import contextlib
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


class _RunCommand(click.Command):
    """Lets options follow a project directory, as MLflow users type them: ``cairn run . -e train -P a=1``.

    Options after a command (``cairn run python x.py -e 3``) stay the command's own.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = _first_positional(self, ctx, args)
        if first is not None and Path(args[first]).is_dir():
            ctx.allow_interspersed_args = True
        return super().parse_args(ctx, args)


def _first_positional(command: click.Command, ctx: click.Context, args: list[str]) -> int | None:
    takes_value = {
        name
        for param in command.get_params(ctx)
        if isinstance(param, click.Option) and not param.is_flag
        for name in param.opts
    }
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return index + 1 if index + 1 < len(args) else None
        if arg.startswith("-") and arg != "-":
            index += 2 if arg in takes_value else 1
            continue
        return index
    return None


_ENV_MANAGERS = ("local", "conda", "virtualenv", "uv")


@click.command(cls=_RunCommand, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--entry-point",
    "-e",
    help="Project mode: the MLproject entry point to run (default: main), or a .py/.sh file of the project.",
)
@click.option(
    "--param-list",
    "-P",
    "param_list",
    multiple=True,
    metavar="KEY=VALUE",
    help="Project mode: a parameter (repeatable).",
)
@click.option(
    "--experiment",
    "--experiment-name",
    "experiment",
    help="Experiment name (created if missing). Default: CAIRN_EXPERIMENT_ID, else CAIRN_EXPERIMENT_NAME, else 0.",
)
@click.option("--experiment-id", help="Experiment id (must exist).")
@click.option("--run-name", "-n", help="Name of the run.")
@click.option(
    "--env-manager",
    type=click.Choice(_ENV_MANAGERS),
    help="Project mode: only local (the current environment) is supported; conda, virtualenv, uv are refused.",
)
@click.option("--no-conda", is_flag=True, help="Project mode: same as --env-manager local.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    entry_point: str | None,
    param_list: tuple[str, ...],
    experiment: str | None,
    experiment_id: str | None,
    run_name: str | None,
    env_manager: str | None,
    no_conda: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND, or an MLflow Project's entry point, inside a new run.

    \b
    Command mode:  cairn run --experiment-name demo -- python train.py --lr 0.1
    Project mode:  cairn run [DIR] [-e ENTRY] [-P key=value ...]

    Project mode is chosen when the only argument is a directory holding an MLproject file, or when
    there is no argument and ./MLproject exists. The entry point's command (default entry point: main)
    runs through bash in the project directory, in the current environment; its parameters (defaults
    included) are logged as params, the git commit of the project as mlflow.source.git.commit.

    The child logs into the run through CAIRN_RUN_ID (and MLFLOW_RUN_ID / MLFLOW_EXPERIMENT_ID for
    MLflow code; MLFLOW_TRACKING_URI only when the store is an http(s) server, which MLflow can reach);
    its output is saved as the run's stdout.txt/stderr.txt artifacts, and the exit code decides FINISHED
    or FAILED (KILLED for a signal). A command that cannot start ends the run FAILED with exit code 127
    (not found) or 126 (not executable).
    """
    if experiment and experiment_id:
        raise click.UsageError("give --experiment/--experiment-name or --experiment-id, not both", ctx)
    project_dir = _project_directory(command)
    if project_dir is None:
        given = [
            name
            for name, value in (
                ("-e/--entry-point", entry_point),
                ("-P", param_list),
                ("--env-manager", env_manager),
                ("--no-conda", no_conda),
            )
            if value
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: only for an MLflow Project (a directory with an MLproject file); "
                "to name the experiment use --experiment-name",
                ctx,
            )
        if not command:
            raise click.UsageError(
                "give a command (cairn run -- python train.py) or run it in a directory with an MLproject file", ctx
            )
        cwd: Path | None = None
        argv, tags, params = list(command), _command_tags(command), dict[str, str]()
    else:
        argv, cwd, tags, params = _project_run(project_dir, entry_point, param_list, env_manager, no_conda, ctx)
    _execute(
        ctx,
        argv,
        cwd=cwd,
        tags=tags,
        params=params,
        experiment=experiment,
        experiment_id=experiment_id,
        run_name=run_name,
        shell_codes=project_dir is not None,
    )


def _command_tags(command: tuple[str, ...]) -> dict[str, str]:
    """Source tags of command mode: the script the command runs (``python train.py`` -> train.py, else the
    command itself) and the git state of its directory (else of the current one), never cairn's own."""
    from cairn.tracking import context

    # the program itself counts only as a relative path (./train.sh): /usr/bin/python3 is a file too
    candidates = [*command[1:], *([command[0]] if not os.path.isabs(command[0]) else [])]
    script = next((Path(arg) for arg in candidates if Path(arg).is_file()), None)
    source = str(script.resolve()) if script is not None else command[0]
    directory = str(script.resolve().parent) if script is not None else os.getcwd()
    return {
        "cairn.command": " ".join(command),
        "mlflow.source.name": source,
        "mlflow.source.type": "LOCAL",
        **context.git_state(directory),
    }


def _project_directory(command: tuple[str, ...]) -> Path | None:
    """The project directory of project mode, or None for command mode (ProjectError for a bad one)."""
    from cairn.projects import mlproject

    if not command:
        return Path(".") if mlproject.find_file(Path(".")) else None
    target = Path(command[0])
    if "://" in command[0] or command[0].startswith("git@"):
        if len(command) == 1:
            raise mlproject.ProjectError(
                f"{command[0]}: remote projects are not supported; clone it and run cairn run DIRECTORY"
            )
        return None
    if not target.is_dir():
        return None
    if mlproject.find_file(target) is None:
        raise mlproject.ProjectError(
            f"{command[0]} is a directory without an MLproject file: give a project directory, "
            "or a command after -- (cairn run -- python train.py)"
        )
    if len(command) > 1:
        raise mlproject.ProjectError(
            f"unexpected argument(s) after the project directory: {' '.join(command[1:])} "
            "(give parameters as -P key=value)"
        )
    return target


def _project_run(
    directory: Path,
    entry_point: str | None,
    param_list: tuple[str, ...],
    env_manager: str | None,
    no_conda: bool,
    ctx: click.Context,
) -> tuple[list[str], Path, dict[str, str], dict[str, str]]:
    """Everything project mode needs before the run exists, so that a bad project creates no run."""
    from cairn.projects import mlproject
    from cairn.tracking import context, validation

    if no_conda and env_manager not in (None, "local"):
        raise click.UsageError(f"--no-conda and --env-manager {env_manager} contradict each other", ctx)
    if env_manager not in (None, "local"):
        raise mlproject.ProjectError(
            f"--env-manager {env_manager} is not supported: cairn runs projects in the current environment; "
            "use --env-manager local (or --no-conda)"
        )
    project = mlproject.load(directory)
    entry = entry_point or "main"
    resolved = mlproject.resolve(project, entry, mlproject.parse_assignments(param_list))
    for key, value in resolved.params.items():  # refused here, before a run exists
        validation.param_value(value, validation.validate_key(key, "param"))
    if project.environment and env_manager is None and not no_conda:
        key, value = project.environment
        err_console.print(
            f"[yellow]warning:[/yellow] {project.file.name} declares {key}: {value}; cairn does not create "
            "that environment and runs the command in the current one (--env-manager local silences this)",
            highlight=False,
        )
    tags = {
        "mlflow.source.type": "PROJECT",
        "mlflow.source.name": str(project.directory),
        "mlflow.project.entryPoint": entry,
        "mlflow.project.env": "local",
        "cairn.command": resolved.command,
        **context.git_state(str(project.directory)),
    }
    return ["bash", "-c", resolved.command], project.directory, tags, resolved.params


_GIT_TAGS = (
    "mlflow.source.git.commit",
    "mlflow.source.git.branch",
    "mlflow.source.git.repoURL",
    "cairn.source.git.dirty",
)
# Exit codes a shell gives for a child ended by SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGTERM.
_SHELL_SIGNAL_CODES = {128 + sig for sig in (1, 2, 3, 9, 15)}


def _execute(
    ctx: click.Context,
    argv: list[str],
    *,
    cwd: Path | None,
    tags: dict[str, str],
    params: dict[str, str],
    experiment: str | None,
    experiment_id: str | None,
    run_name: str | None,
    shell_codes: bool,
) -> None:
    from cairn.tracking import config
    from cairn.tracking.entities import Param

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
    run_obj = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run_obj.info.run_id
    err_console.print(f"[dim]cairn: run {run_id} ({run_obj.info.run_name}) in experiment {experiment_id}[/dim]")
    uri = config.resolve_tracking_uri(ctx.obj["store"]) if ctx.obj.get("store") else config.get_tracking_uri()
    env = _child_environment(uri, ctx.obj.get("artifact_root"), run_id, experiment_id, base=os.environ)
    status, code = "FAILED", 1
    try:  # whatever happens (cannot start, Ctrl-C, an upload error), the run does not stay RUNNING
        for key in _GIT_TAGS:  # git tags describe the command's code, not cairn's own install
            if key not in tags and key in run_obj.data.tags:
                client.delete_tag(run_id, key)
        if params:
            client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        with tempfile.TemporaryDirectory(prefix="cairn-run-") as tmp:
            try:
                code = _run_teed(argv, env, Path(tmp), cwd=cwd, own_group=shell_codes and not _on_terminal())
            except _CannotStart as exc:
                code = exc.exit_code
                err_console.print(f"[red]error:[/red] {exc}", highlight=False)
                (Path(tmp) / "stdout.txt").write_text("")
                (Path(tmp) / "stderr.txt").write_text(f"cairn run: {exc}\n")
            for name in ("stdout.txt", "stderr.txt"):
                client.log_artifact(run_id, Path(tmp) / name)
        killed = code < 0 or (shell_codes and code in _SHELL_SIGNAL_CODES)
        status = "FINISHED" if code == 0 else ("KILLED" if killed else "FAILED")
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
    # torchrun --max-restarts: with the launcher's shared rendezvous store, restarted workers read the dead
    # attempt's addresses and fail in init_process_group (torch 2.13, gloo); the user's own value wins
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return env


class _CannotStart(CairnError):
    """The command of `cairn run` could not be started; ``exit_code`` follows the shell (127, 126)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _on_terminal() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def _forward(child: subprocess.Popen[bytes], signum: int, own_group: bool) -> None:
    if not own_group:
        child.send_signal(signum)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def _run_teed(
    command: list[str], env: dict[str, str], directory: Path, *, cwd: Path | None = None, own_group: bool = False
) -> int:
    """Start the child, copy its output to our stdout/stderr and to files; forward SIGINT/SIGTERM.

    With ``own_group`` (a project's shell command when stdin is not a terminal) the child leads its own
    process group and a signal reaches every process of it, not only the shell; on a terminal the child
    stays in cairn's group so that it can read the terminal, and Ctrl-C reaches all of it there anyway.
    """
    try:
        child = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0 if own_group else None,
        )
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
        signal.signal(sig, lambda signum, frame: _forward(child, signum, own_group))
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for thread in pumps:
            thread.join()
    return code
