"""Re-logging a model over an existing one: a kill at any instant leaves the old or the new model, complete.

Real processes, real SIGKILLs: a writer subprocess re-logs a small custom pyfunc model (a constant
function, its output tells the two models apart, plus a 2 MB artifact file) and kills itself at a
step of the replace; a fresh reader process then loads ``runs:/<id>/model`` and ``models:/m/1`` with
cairn and lists the model's files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cairn.artifacts import ArtifactStore
from cairn.errors import InvalidArgument

pytest.importorskip("cloudpickle")

OLD, NEW = 1.0, 2.0

WRITER = r"""
import os, signal, sys
import cairn, cairn.pyfunc
import cairn.artifacts.local as local

run_id, value, kill_at, mode = sys.argv[1:5]

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "renames":  # a filesystem without an atomic exchange
    local._rename_exchange = lambda first, second: False
if kill_at.startswith("step:"):
    wanted = kill_at[len("step:"):]
    local._replace_step = lambda step: die() if step == wanted else None
elif kill_at == "in-save":  # the model is half-written in its staging directory
    import cairn.models.packaging as packaging
    packaging.write_files_manifest = die
elif kill_at == "first-rename-into-model":  # whatever renames something to the model's own path
    model_dir = os.path.join(cairn.Client().get_run(run_id).info.artifact_uri, "model")
    for name in ("rename", "replace"):
        def patched(src, dst, *args, _real=getattr(os, name), **kwargs):
            if os.path.abspath(os.fspath(dst)) in (model_dir,) or os.fspath(dst).startswith(model_dir + os.sep):
                die()
            return _real(src, dst, *args, **kwargs)
        setattr(os, name, patched)
print("ready", flush=True)
log_model(run_id, float(value))
print("logged", flush=True)
"""

LOG_MODEL = r"""
def log_model(run_id, value):
    import os, cairn.pyfunc
    weights = os.path.abspath("weights-%s.bin" % value)
    with open(weights, "wb") as out:
        out.write(os.urandom(2 * 1024 * 1024))
    cairn.pyfunc.log_model(
        "model", python_model=lambda data, value=value: [value] * len(data), artifacts={"weights": weights},
        pip_requirements=[], run_id=run_id, registered_model_name="m",
    )
"""

READER = r"""
import json, sys
import cairn.pyfunc
from cairn.models.loading import resolve_local_model_dir

found = {}
for uri in sys.argv[1:]:
    model = cairn.pyfunc.load_model(uri, allow_pickle=True)
    directory = resolve_local_model_dir(uri)
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    listed = sorted(json.loads((directory / "cairn_files.json").read_text())["files"])
    found[uri] = {"prediction": float(model.predict([0])[0]), "files": files, "listed": listed}
print(json.dumps(found))
"""


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOG_MODEL + script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def first_model() -> str:
    """A run with the OLD model logged (and registered as version 1), in this process."""
    import cairn

    namespace: dict[str, Any] = {}
    exec(LOG_MODEL, namespace)
    with cairn.start_run() as run:
        namespace["log_model"](run.info.run_id, OLD)
    return run.info.run_id


def _check_old_or_new(tmp_path: Path, run_id: str) -> float:
    """Load the model in a fresh process: it must be OLD or NEW, with exactly its own files."""
    uris = [f"runs:/{run_id}/model", "models:/m/1"]
    read = run_script(READER, *uris, cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    found: dict[str, Any] = json.loads(read.stdout)
    predictions = {found[uri]["prediction"] for uri in uris}
    assert len(predictions) == 1 and predictions <= {OLD, NEW}, found
    for uri in uris:
        assert found[uri]["files"] == sorted([*found[uri]["listed"], "MLmodel", "cairn_files.json"]), found[uri]
    artifacts = Path(_artifact_dir(run_id))
    leftovers = [p.name for p in artifacts.iterdir() if p.name != "model"]
    assert all(name.startswith((".cairn-tmp-", ".cairn-old-")) for name in leftovers), leftovers
    return predictions.pop()


def _artifact_dir(run_id: str) -> str:
    import cairn

    return str(cairn.Client().get_run(run_id).info.artifact_uri)


EXCHANGE_STEPS = ["staged", "exchanged", "old-removed"]
RENAME_STEPS = ["staged", "moved-aside", "moved-in", "old-removed"]


@pytest.mark.parametrize(
    ("mode", "kill_at"),
    [("exchange", f"step:{step}") for step in EXCHANGE_STEPS]
    + [("renames", f"step:{step}") for step in RENAME_STEPS if step not in EXCHANGE_STEPS]
    + [("exchange", "first-rename-into-model")],
)
def test_a_relog_killed_inside_the_swap_leaves_the_old_or_the_new_model(
    tmp_path: Path, mode: str, kill_at: str
) -> None:
    run_id = first_model()
    writer = run_script(WRITER, run_id, str(NEW), kill_at, mode, cwd=tmp_path)
    if kill_at.startswith("step:"):
        assert writer.returncode == -signal.SIGKILL, (writer.stdout, writer.stderr)  # the step exists and was hit
    value = _check_old_or_new(tmp_path, run_id)
    expected = OLD if kill_at in ("step:staged", "step:moved-aside") else NEW
    if kill_at != "first-rename-into-model":
        assert value == expected
    # A later re-log over the leftovers works and leaves none behind.
    namespace: dict[str, Any] = {}
    exec(LOG_MODEL, namespace)
    namespace["log_model"](run_id, NEW + 1)
    import cairn.pyfunc

    assert cairn.pyfunc.load_model(f"runs:/{run_id}/model", allow_pickle=True).predict([0]) == [NEW + 1]
    assert not [name for name in os.listdir(_artifact_dir(run_id)) if name.startswith(".cairn-old-")]


def test_random_kills_during_a_relog_never_lose_the_model(tmp_path: Path) -> None:
    run_id = first_model()
    rng = random.Random(13)
    deadline = time.monotonic() + 10  # a slow machine still gets 2 kills; a fast one up to 10
    kills = 0
    while kills < 2 or (time.monotonic() < deadline and kills < 10):
        writer = subprocess.Popen(
            [sys.executable, "-c", LOG_MODEL + WRITER, run_id, str(NEW), "never", "exchange"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))  # log_model takes about that long here
        os.kill(writer.pid, signal.SIGKILL)
        writer.communicate(timeout=60)
        kills += 1
        _check_old_or_new(tmp_path, run_id)


def test_replace_dir_uploads_first_then_prunes(store: ArtifactStore, tmp_path: Path) -> None:
    """Both backends: the new files replace the old ones, files only the old directory had are gone."""
    old, new = tmp_path / "old", tmp_path / "new"
    for directory, names in ((old, ["MLmodel", "a.bin", "only-old/x.txt"]), (new, ["MLmodel", "a.bin", "sub/b.txt"])):
        for name in names:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(f"{directory.name}:{name}")
    store.replace_dir(old, "model", commit_file="MLmodel")
    store.put_bytes(b"neighbour", "model-notes.txt")
    store.replace_dir(new, "model", commit_file="MLmodel")
    assert [info.path for info in store.list("model")] == ["model/MLmodel", "model/a.bin", "model/sub"]
    with store.open("model/a.bin") as handle:
        assert handle.read() == b"new:a.bin"
    assert not store.exists("model/only-old")
    assert store.exists("model-notes.txt")
    with pytest.raises(InvalidArgument):
        store.replace_dir(new, "")
