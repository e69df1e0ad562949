"""``cairn run`` with MLflow Projects: MLproject parsing (hostile input) and real runs through the CLI."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cairn.projects import mlproject
from cairn.projects.mlproject import ProjectError
from cairn.tracking.client import Client

TRAIN = """\
import os, sys
import cairn
args = sys.argv[1:]
cairn.log_metric("n_args", len(args))
cairn.log_text(os.getcwd(), "cwd.txt")
print("args:", args)
"""


def _project(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "MLproject").write_text(text)
    return directory


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this one
    return env


def _cairn(store: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cairn", "--store", str(store), "run", *args],
        env=_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _runs(store: Path, experiment: str = "Default") -> list:  # type: ignore[type-arg]
    client = Client(str(store))
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else list(client.search_runs([found.experiment_id]).items)


# -- MLproject parsing and command resolution (no subprocess) ------------------------------------

PROJECT = """\
name: demo
entry_points:
  main:
    parameters:
      alpha: {type: float, default: 0.1}
      epochs: {type: int, default: 3}
      label: string
      data: {type: path, default: data.csv}
      out: {type: uri, default: out}
    command: "python train.py --alpha {alpha} --epochs {epochs} --label {label} --data {data} --out {out}"
"""


def _loaded(tmp_path: Path, text: str = PROJECT) -> mlproject.Project:
    directory = _project(tmp_path / "proj", text)
    (directory / "data.csv").write_text("x\n1\n")
    return mlproject.load(directory)


def test_defaults_overrides_quoting_and_extra_params(tmp_path: Path) -> None:
    project = _loaded(tmp_path)
    resolved = mlproject.resolve(project, "main", {"label": "a b; rm -rf /", "alpha": "0.5", "seed": "7 8"})
    words = shlex.split(resolved.command)
    assert words == [
        "python", "train.py", "--alpha", "0.5", "--epochs", "3", "--label", "a b; rm -rf /",
        "--data", str(project.directory / "data.csv"), "--out", "out", "--seed", "7 8",
    ]  # fmt: skip
    assert resolved.params == {
        "alpha": "0.5", "epochs": "3", "label": "a b; rm -rf /", "data": "data.csv", "out": "out", "seed": "7 8",
    }  # fmt: skip


def test_missing_parameter_is_named(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match=r"no value for parameter\(s\) label .*-P label=VALUE"):
        mlproject.resolve(_loaded(tmp_path), "main", {})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"alpha": "abc"}, r"parameter 'alpha' \(float\): 'abc' is not a number"),
        ({"epochs": "1.5"}, r"parameter 'epochs' \(int\): '1.5' is not an integer"),
    ],
)
def test_typed_parameters_are_checked(tmp_path: Path, given: dict[str, str], message: str) -> None:
    with pytest.raises(ProjectError, match=message):
        mlproject.resolve(_loaded(tmp_path), "main", {"label": "x", **given})


def test_path_and_uri_parameters_stay_inside_the_project(tmp_path: Path) -> None:
    project = _loaded(tmp_path)
    (tmp_path / "secret.txt").write_text("s")
    (project.directory / "link").symlink_to(tmp_path / "secret.txt")
    for bad in ("../../etc/passwd", "/etc/passwd", "../secret.txt", "link", "~/x"):
        with pytest.raises(ProjectError, match="outside the project directory"):
            mlproject.resolve(project, "main", {"label": "x", "data": bad})
    with pytest.raises(ProjectError, match="does not exist"):
        mlproject.resolve(project, "main", {"label": "x", "data": "missing.csv"})
    with pytest.raises(ProjectError, match="is a URL"):
        mlproject.resolve(project, "main", {"label": "x", "data": "s3://bucket/data.csv"})
    for bad in ("../out", "/tmp/out", "file:///etc/passwd", "file:../x"):
        with pytest.raises(ProjectError, match="outside the project directory"):
            mlproject.resolve(project, "main", {"label": "x", "out": bad})
    kept = mlproject.resolve(project, "main", {"label": "x", "out": "s3://bucket/run 1"})
    assert shlex.split(kept.command)[-1] == "s3://bucket/run 1"
    assert "file:sub/new" in mlproject.resolve(project, "main", {"label": "x", "out": "file:sub/new"}).command


def test_dashed_parameter_names_work_as_in_mlflow(tmp_path: Path) -> None:
    text = "entry_points: {main: {command: 'python t.py {learning-rate}', parameters: {learning-rate: float}}}\n"
    project = _loaded(tmp_path, text)
    assert mlproject.resolve(project, "main", {"learning-rate": "0.01"}).command == "python t.py 0.01"


def test_script_entry_point_like_mlflow(tmp_path: Path) -> None:
    project = _loaded(tmp_path)
    (project.directory / "other {x}.py").write_text("")
    assert mlproject.resolve(project, "other {x}.py", {"lr": "1"}).command == "python 'other {x}.py' --lr 1"
    with pytest.raises(ProjectError, match="outside the project"):
        mlproject.resolve(project, "../escape.py", {})
    with pytest.raises(ProjectError, match=r"no entry point 'train'.*entry points: main"):
        mlproject.resolve(project, "train", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must be a YAML mapping"),
        ("entry_points: {main: {command: [rm, -rf]}}\n", "command must be a non-empty string"),
        ("entry_points: {main: python x.py}\n", "must be a mapping with a command"),
        ("entry_points: {main: {command: x, run_as: root}}\n", r"unknown key\(s\) run_as"),
        ("nmae: x\nentry_points: {main: {command: x}}\n", r"unknown key\(s\) nmae"),
        ("entry_points: {main: {command: 'x {a.__class__}', parameters: {a: string}}}\n", "not a declared parameter"),
        ("entry_points: {main: {command: 'x {0}'}}\n", r"uses \{0\}, which is not a declared parameter"),
        ("entry_points: {main: {command: 'x {a!r}', parameters: {a: string}}}\n", "not a declared parameter"),
        ("entry_points: {main: {command: 'x {a', parameters: {a: string}}}\n", "not a valid template"),
        ("entry_points: {main: {command: x, parameters: {a: {type: tensor}}}}\n", "unknown type 'tensor'"),
        ("entry_points: {main: {command: x, parameters: {a: 0.1}}}\n", "give a type name"),
        ("entry_points: {main: {command: x, parameters: {a: {default: [1]}}}}\n", "default must be a single value"),
        ("conda_env: c.yaml\npython_env: p.yaml\n", "declares several environments"),
        ("docker_env: ubuntu\n", "docker_env must be a mapping with an image"),
        ("databricks_spark_job: {python_file: x.py}\n", "not supported"),
        ("entry_points: {main: {command: x}\n", "not valid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    ],
)
def test_hostile_or_broken_mlproject_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProjectError, match=message):
        mlproject.load(_project(tmp_path / "proj", text))


def test_mlproject_link_out_of_the_project_and_bad_assignments(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("entry_points: {main: {command: echo hi}}\n")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "MLproject").symlink_to(outside)
    with pytest.raises(ProjectError, match="outside the project directory; not read"):
        mlproject.load(tmp_path / "proj")
    with pytest.raises(ProjectError, match="-P 'alpha': give key=value"):
        mlproject.parse_assignments(["alpha"])
    with pytest.raises(ProjectError, match="-P a given twice"):
        mlproject.parse_assignments(["a=1", "a=2"])
    assert mlproject.parse_assignments(["q=x=y", "e="]) == {"q": "x=y", "e": ""}


# -- cairn run DIR: real runs ----------------------------------------------------------------------

RUNNABLE = """\
name: demo
entry_points:
  main:
    parameters:
      alpha: {type: float, default: 0.1}
      label: string
    command: "python train.py {alpha} {label}"
  other:
    command: "echo other entry point"
"""


def test_project_run_logs_params_tags_output_and_cwd(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", RUNNABLE)
    (project / "train.py").write_text(TRAIN)
    store = tmp_path / "runs"
    # MLflow's order: options after the project directory
    result = _cairn(store, str(project), "--experiment-name", "proj", "-P", "label=a b", "-P", "seed=3", "-n", "r1")
    assert result.returncode == 0, result.stderr
    assert "args: ['0.1', 'a b', '--seed', '3']" in result.stdout
    assert "warning" not in result.stderr  # no environment declared
    (run,) = _runs(store, "proj")
    assert run.info.status.value == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params == {"alpha": "0.1", "label": "a b", "seed": "3"}
    assert run.data.metrics == {"n_args": 4.0}
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "PROJECT"
    assert tags["mlflow.source.name"] == str(project.resolve())
    assert tags["mlflow.project.entryPoint"] == "main"
    assert tags["mlflow.project.env"] == "local"
    assert "mlflow.source.git.commit" not in tags  # not a repository (cairn's own checkout does not leak in)
    artifacts = Path(run.info.artifact_uri)
    assert (artifacts / "cwd.txt").read_text() == str(project.resolve())
    assert "args:" in (artifacts / "stdout.txt").read_text()


def test_project_run_without_arguments_in_a_git_repository(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", RUNNABLE)
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=x"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "MLproject"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=project, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True)
    store = tmp_path / "runs"
    result = _cairn(store, "-e", "other", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "other entry point" in result.stdout
    (run,) = _runs(store)
    assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert run.data.tags["mlflow.project.entryPoint"] == "other"
    assert run.data.params == {}


def test_declared_environment_warns_once_and_env_managers_are_refused(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", "conda_env: conda.yaml\nentry_points: {main: {command: echo ran}}\n")
    store = tmp_path / "runs"
    warned = _cairn(store, str(project))
    assert warned.returncode == 0, warned.stderr
    assert "ran" in warned.stdout
    assert warned.stderr.count("warning:") == 1
    assert "MLproject declares conda_env: conda.yaml" in " ".join(warned.stderr.split())
    quiet = _cairn(store, "--no-conda", str(project))
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    for manager in ("conda", "virtualenv"):
        refused = _cairn(store, str(project), "--env-manager", manager)
        assert refused.returncode == 1
        assert f"--env-manager {manager} is not supported" in refused.stderr
        assert "--env-manager local" in " ".join(refused.stderr.split())
    assert [r.info.status.value for r in _runs(store)] == ["FINISHED", "FINISHED"]  # refusals created no run


def test_bad_input_is_refused_before_a_run_exists(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", RUNNABLE)
    store = tmp_path / "runs"
    typed = _cairn(store, str(project), "-P", "label=x", "-P", "alpha=abc")
    assert typed.returncode == 1 and "parameter 'alpha' (float): 'abc' is not a number" in typed.stderr
    missing = _cairn(store, str(project))
    assert missing.returncode == 1 and "label" in missing.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    not_project = _cairn(store, str(plain))
    assert not_project.returncode == 1
    assert "directory without an MLproject file" in not_project.stderr and "cannot start" not in not_project.stderr
    bad_key = _cairn(store, str(project), "-P", "label=x", "-P", "a*b=1")
    assert bad_key.returncode == 1 and "param key 'a*b'" in bad_key.stderr
    entry_with_command = _cairn(store, "-e", "jobs", "--", "true")
    assert entry_with_command.returncode == 2 and "--experiment-name" in entry_with_command.stderr
    assert _runs(store) == []


@pytest.mark.parametrize(
    ("command", "code", "status"),
    [
        ("no-such-command-cairn-test", 127, "FAILED"),
        ("python -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'", 128 + 9, "KILLED"),
        ("echo first; python -c 'import os, signal; os.kill(os.getpid(), signal.SIGTERM)'", 128 + 15, "KILLED"),
    ],
)
def test_project_command_that_cannot_start_or_is_killed(tmp_path: Path, command: str, code: int, status: str) -> None:
    project = _project(tmp_path / "proj", f"entry_points:\n  main:\n    command: {command!r}\n")
    store = tmp_path / "runs"
    result = _cairn(store, str(project))
    assert result.returncode == code, result.stderr
    (run,) = _runs(store)
    assert run.info.status.value == status


def test_ctrl_c_ends_a_project_run_killed(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", "entry_points: {main: {command: 'sleep 30'}}\n")
    store = tmp_path / "runs"
    child = subprocess.Popen(
        [sys.executable, "-m", "cairn", "--store", str(store), "run", str(project)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    assert "cairn: run" in child.stderr.readline()
    time.sleep(0.5)  # let bash start sleep
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=20) == 128 + 2
    (run,) = _runs(store)
    assert run.info.status.value == "KILLED"


def test_sigterm_reaches_every_process_of_a_compound_command(tmp_path: Path) -> None:
    command = 'python -c \'import os, time; open("pid", "w").write(str(os.getpid())); time.sleep(30)\'; echo after'
    project = _project(tmp_path / "proj", f"entry_points:\n  main:\n    command: {json.dumps(command)}\n")
    store = tmp_path / "runs"
    child = subprocess.Popen(
        [sys.executable, "-m", "cairn", "--store", str(store), "run", str(project)],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pid_file = project / "pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists(), child.communicate(timeout=5)
    python_pid = int(pid_file.read_text())
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == 128 + 15
    (run,) = _runs(store)
    assert run.info.status.value == "KILLED"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the python under bash got the signal too, not orphaned
        try:
            os.kill(python_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"process {python_pid} under the shell still runs after SIGTERM")


SEED_004_MLPROJECT = """\
name: projects-and-tracking

entry_points:
  main:
    command: |
      env | grep MLFLOW && \\
      python track.py --mlflow_run_id $MLFLOW_RUN_ID
"""

SEED_004_TRACK = """\
import argparse, os
import cairn as mlflow

parser = argparse.ArgumentParser()
parser.add_argument('--mlflow_run_id')
args = parser.parse_args()
assert args.mlflow_run_id == os.environ['MLFLOW_RUN_ID']
client = mlflow.tracking.MlflowClient()
client.log_param(run_id=args.mlflow_run_id, key="test_param", value=100)
for step in range(3):
    client.log_metric(run_id=args.mlflow_run_id, key="test_metric", value=step * 10.0, step=step)
"""


def test_seed_004_mlflow_run_no_conda_dot(tmp_path: Path) -> None:
    """The seed's `mlflow run --no-conda .`, typed as `cairn run --no-conda .` in the project directory."""
    project = _project(tmp_path / "proj", SEED_004_MLPROJECT)
    (project / "track.py").write_text(SEED_004_TRACK)
    store = tmp_path / "runs"
    result = _cairn(store, "--no-conda", ".", cwd=project)
    assert result.returncode == 0, result.stderr
    (run,) = _runs(store)
    assert f"MLFLOW_RUN_ID={run.info.run_id}" in result.stdout
    assert run.info.status.value == "FINISHED"
    assert run.data.params == {"test_param": "100"}
    history = Client(str(store)).get_metric_history(run.info.run_id, "test_metric")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 10.0), (2, 20.0)]


def test_command_mode_keeps_options_after_the_command(tmp_path: Path) -> None:
    """`cairn run python x.py -e 3 -P y`: options after a command that is not a directory are the command's."""
    (tmp_path / "MLproject").write_text("entry_points: {main: {command: echo project}}\n")  # a command wins over it
    code = "import sys; print(sys.argv[1:])"
    result = _cairn(tmp_path / "runs", "python", "-c", code, "-e", "3", "-P", "y", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "['-e', '3', '-P', 'y']" in result.stdout
    (run,) = _runs(tmp_path / "runs")
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.params == {}


def test_command_mode_source_tags_describe_the_script_not_cairn(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('trained')\n")
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=x"]
    subprocess.run([*git, "init", "-q"], cwd=code, check=True)
    subprocess.run([*git, "add", "train.py"], cwd=code, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=code, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code, capture_output=True, text=True, check=True)
    store = tmp_path / "runs"

    result = _cairn(store, "--", sys.executable, "train.py", cwd=code)
    assert result.returncode == 0, result.stderr
    elsewhere = tmp_path / "elsewhere"  # not a repository: no git tag at all, cairn's checkout does not leak in
    elsewhere.mkdir()
    result = _cairn(store, "--", sys.executable, "-c", "print(1)", cwd=elsewhere)
    assert result.returncode == 0, result.stderr

    in_repo, outside = sorted(_runs(store), key=lambda run: run.info.start_time)
    assert in_repo.data.tags["mlflow.source.name"] == str((code / "train.py").resolve())
    assert in_repo.data.tags["mlflow.source.type"] == "LOCAL"
    assert in_repo.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert "mlflow.source.git.commit" not in outside.data.tags
