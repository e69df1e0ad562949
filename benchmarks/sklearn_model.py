"""scikit-learn model benchmark: ``log_model`` + ``load_model`` + ``predict`` of a RandomForest, cairn vs MLflow.

The model: ``RandomForestClassifier(n_estimators=100, random_state=0)`` fitted once, untimed, on
``make_classification(n_samples=10_000, n_features=20, random_state=0)`` and handed to every side
(cairn with this script's interpreter, MLflow with ``benchmarks/.venv-mlflow`` if it has
scikit-learn and skops, else this interpreter if it can import mlflow). The configurations take
turns in rounds, so load from other work on the machine falls on all of them alike; each turn is a
fresh interpreter that does one untimed warm-up and then, per repetition, in a fresh run of a fresh
SQLite store:

- ``log_model``: ``<lib>.sklearn.log_model(model, name="model")`` inside an active run;
- ``load_model``: ``<lib>.sklearn.load_model("runs:/<id>/model")`` (the estimator itself);
- ``pyfunc load``: ``<lib>.pyfunc.load_model("runs:/<id>/model")``;
- ``predict``: the pyfunc model's ``predict`` on the 10,000 training rows.

Formats compared like for like: skops (both libraries' safe default; MLflow needs
``skops_trusted_types=["sklearn.tree._tree.Tree"]`` to save a forest and
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`` to load it) and cloudpickle (cairn loads it with
``allow_pickle=True``). MLflow runs with its defaults, which infer pip requirements by loading the
model in a subprocess, and once more with ``pip_requirements`` given, which skips that step.

    /work/main/.venv/bin/python benchmarks/sklearn_model.py [--quick] [--reps 5] [--mlflow-python PATH]

Appends (or replaces) its section in ``benchmarks/RESULTS.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULT_MARKER, emit, write_section  # noqa: E402 - needs the path above

DEFAULT_MLFLOW_PYTHON = HERE / ".venv-mlflow" / "bin" / "python"
RESULTS = HERE / "RESULTS.md"
SECTION = "sklearn_model"
STEPS = ("log_model", "load_model", "pyfunc_load", "predict")


def _fit(n_samples: int, n_features: int, n_estimators: int) -> tuple[Any, Any]:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=10, random_state=0)
    return RandomForestClassifier(n_estimators=n_estimators, random_state=0, n_jobs=1).fit(X, y), X


def _load_workload(path: str) -> tuple[Any, Any]:
    """The forest and data the parent fitted once (its own pickle file, so unpickling it is safe)."""
    with open(path, "rb") as stream:
        model, X = pickle.load(stream)
    return model, X


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# -- the two sides (each in its own interpreter) -------------------------------------------------------


def side_cairn(args: argparse.Namespace) -> dict[str, Any]:
    import cairn
    import cairn.pyfunc
    import cairn.sklearn
    from cairn.models.loading import resolve_local_model_dir

    model, X = _load_workload(args.workload)
    expected = model.predict(X)
    allow = args.format == "cloudpickle"
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    size = 0
    for rep in range(-1, args.reps):  # rep -1 warms imports and caches and is not recorded
        work = Path(tempfile.mkdtemp(prefix=f"cairn-sk-{rep}-", dir=args.dir))
        os.chdir(work)
        cairn.set_tracking_uri(None)  # ./cairn-runs in the fresh directory
        step: dict[str, float] = {}
        with cairn.start_run():
            cairn.log_param("warmup", 1)  # store creation stays out of the timing
            step["log_model"], info = _timed(
                cairn.sklearn.log_model, model, name="model", serialization_format=args.format
            )
        step["load_model"], native = _timed(cairn.sklearn.load_model, info.model_uri, allow_pickle=allow)
        step["pyfunc_load"], pyfunc = _timed(cairn.pyfunc.load_model, info.model_uri, allow_pickle=allow)
        step["predict"], predicted = _timed(pyfunc.predict, X)
        if not (native.predict(X) == expected).all() or not (predicted == expected).all():
            raise SystemExit("cairn: loaded model predicts differently")
        if rep >= 0:
            for name, value in step.items():
                times[name].append(value)
        size = _dir_size(resolve_local_model_dir(info.model_uri))
    from cairn.models.hashes import verify_model_files

    local = resolve_local_model_dir(info.model_uri)
    verify_ms = statistics.median(_timed(verify_model_files, local)[0] for _ in range(5)) * 1000
    return {
        "lib": "cairn",
        "version": cairn.__version__,
        "format": args.format,
        "times": times,
        "size": size,
        "verify_ms": verify_ms,
    }


def side_mlflow(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # MLflow gates every format behind it
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn

    model, X = _load_workload(args.workload)
    expected = model.predict(X)
    extra: dict[str, Any] = {"serialization_format": args.format}
    if args.format == "skops":
        extra["skops_trusted_types"] = ["sklearn.tree._tree.Tree"]
    if args.pip_given:
        extra["pip_requirements"] = ["scikit-learn", args.format]
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    size = 0
    for rep in range(-1, args.reps):  # rep -1 warms imports and caches and is not recorded
        work = Path(tempfile.mkdtemp(prefix=f"mlflow-sk-{rep}-", dir=args.dir))
        os.chdir(work)
        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        mlflow.set_experiment("sklearn")  # database creation (migrations) stays out of the timing
        step: dict[str, float] = {}
        with mlflow.start_run():
            mlflow.log_param("warmup", 1)
            step["log_model"], info = _timed(mlflow.sklearn.log_model, model, name="model", **extra)
        step["load_model"], native = _timed(mlflow.sklearn.load_model, info.model_uri)
        step["pyfunc_load"], pyfunc = _timed(mlflow.pyfunc.load_model, info.model_uri)
        step["predict"], predicted = _timed(pyfunc.predict, X)
        if not (native.predict(X) == expected).all() or not (predicted == expected).all():
            raise SystemExit("mlflow: loaded model predicts differently")
        if rep >= 0:
            for name, value in step.items():
                times[name].append(value)
        size = _dir_size(Path(mlflow.artifacts.download_artifacts(info.model_uri)))
    return {"lib": "mlflow", "version": mlflow.__version__, "format": args.format, "times": times, "size": size}


# -- the parent ------------------------------------------------------------------------------------------


def _run_side(python: str, side: str, args: argparse.Namespace, fmt: str, pip_given: bool = False) -> dict[str, Any]:
    command = [
        python,
        str(Path(__file__).resolve()),
        "--side",
        side,
        "--format",
        fmt,
        "--reps",
        str(args.reps_per_process),
        "--workload",
        args.workload,
        "--dir",
        args.dir,
    ]
    if pip_given:
        command.append("--pip-given")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CAIRN_ALLOW_PICKLE", None)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER) :]))
    raise SystemExit(f"{side} side failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _mlflow_python(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [str(DEFAULT_MLFLOW_PYTHON), sys.executable]
    for python in candidates:
        if python and Path(python).exists():
            check = subprocess.run([python, "-c", "import mlflow, sklearn, skops"], capture_output=True)
            if check.returncode == 0:
                return python
    return None


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _fmt_ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ratio(ours: float, theirs: float) -> str:
    if ours <= 0 or theirs <= 0:
        return "—"
    return f"{theirs / ours:.1f}x faster" if theirs >= ours else f"{ours / theirs:.2f}x slower"


def _table(cairn_result: dict[str, Any], mlflow_result: dict[str, Any] | None, label: str) -> list[str]:
    lines = [
        f"### {label}",
        "",
        "| step (median ms) | cairn | MLflow | ratio (cairn vs MLflow) |",
        "|---|---:|---:|---|",
    ]
    ours_total = theirs_total = 0.0
    for step in STEPS:
        ours = _median_ms(cairn_result["times"][step])
        theirs = _median_ms(mlflow_result["times"][step]) if mlflow_result else 0.0
        ours_total += ours
        theirs_total += theirs
        name = {"pyfunc_load": "pyfunc load_model", "predict": "pyfunc predict (10,000 rows)"}.get(step, step)
        lines.append(
            f"| {name} | {_fmt_ms(ours)} | {_fmt_ms(theirs) if mlflow_result else '—'} | {_ratio(ours, theirs)} |"
        )
    lines.append(
        f"| **log + load + pyfunc load + predict** | **{_fmt_ms(ours_total)}** | "
        f"**{_fmt_ms(theirs_total) if mlflow_result else '—'}** | **{_ratio(ours_total, theirs_total)}** |"
    )
    their_size = f"{mlflow_result['size'] / 1e6:,.1f}" if mlflow_result else "—"
    lines.append(f"| model directory, MB | {cairn_result['size'] / 1e6:,.1f} | {their_size} | — |")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=("cairn", "mlflow"))
    parser.add_argument("--format", default="skops", choices=("skops", "cloudpickle"))
    parser.add_argument("--pip-given", action="store_true")
    parser.add_argument("--reps", type=int, default=5, help="rounds (parent) or repetitions (side)")
    parser.add_argument("--reps-per-process", type=int, default=2)
    parser.add_argument("--workload", default=None, help="(side) the pickled forest and data")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--quick", action="store_true", help="20 trees, 2 rounds, print only")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--mlflow-python", default=None)
    args = parser.parse_args()

    if args.side:
        emit(side_cairn(args) if args.side == "cairn" else side_mlflow(args))
        return

    if args.quick:
        args.trees, args.reps = 20, 2
    mlflow_python = None if args.skip_mlflow else _mlflow_python(args.mlflow_python)
    load = os.getloadavg()
    configs: list[tuple[str, str, str, bool]] = []  # (key, side, format, pip_given)
    for fmt in ("skops", "cloudpickle"):
        configs.append((f"cairn-{fmt}", "cairn", fmt, False))
        if mlflow_python:
            configs += [(f"mlflow-{fmt}", "mlflow", fmt, False), (f"mlflow-{fmt}-pip", "mlflow", fmt, True)]
    results: dict[str, dict[str, Any]] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cairn-bench-sk-") as tmp:
        args.dir = tmp
        args.workload = str(Path(tmp) / "workload.pkl")
        print(f"[sklearn_model] fitting the forest ({args.trees} trees) ...", file=sys.stderr, flush=True)
        with open(args.workload, "wb") as out:
            pickle.dump(_fit(args.rows, args.features, args.trees), out)
        # Rounds interleave the sides, so load from other work on the machine falls on all of them alike.
        for round_index in range(args.reps):
            for key, side, fmt, pip_given in configs:
                print(f"[sklearn_model] round {round_index + 1}/{args.reps}: {key}", file=sys.stderr, flush=True)
                python = sys.executable if side == "cairn" else str(mlflow_python)
                result = _run_side(python, side, args, fmt, pip_given=pip_given)
                versions[side] = result["version"]
                if key not in results:
                    results[key] = result
                else:
                    for step, values in result["times"].items():
                        results[key]["times"][step].extend(values)
                    if "verify_ms" in result:
                        results[key]["verify_ms"] = min(results[key]["verify_ms"], result["verify_ms"])
    sections: list[str] = []
    for fmt in ("skops", "cloudpickle"):
        ours = results[f"cairn-{fmt}"]
        sections += _table(ours, results.get(f"mlflow-{fmt}"), f"{fmt}: cairn vs MLflow with its defaults")
        sections += [
            f"cairn's loads include checking the sha256 of every model file against `cairn_files.json` "
            f"({ours['verify_ms']:.1f} ms for this model, once per load), which MLflow does not do"
            + (
                "; the skops load also computes its trust list from the file instead of reading it from MLmodel."
                if fmt == "skops"
                else "."
            ),
            "",
        ]
        if mlflow_python:
            sections += _table(
                ours, results[f"mlflow-{fmt}-pip"], f"{fmt}: cairn vs MLflow with `pip_requirements` given"
            )
    samples = args.reps * args.reps_per_process

    header = [
        f"## sklearn model: log_model + load_model + predict, RandomForest ({args.trees} trees, "
        f"{args.rows:,} x {args.features})",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}",
        f"- Python {platform.python_version()}, cairn {versions.get('cairn', '?')}, "
        f"MLflow {versions.get('mlflow', 'not run')}; median of {samples} repetitions: {args.reps} rounds that "
        f"take turns between the configurations, each a fresh interpreter doing one untimed warm-up and "
        f"{args.reps_per_process} timed repetitions, each repetition in a fresh run of a fresh SQLite store",
        f"- Command: `{Path(sys.executable)} benchmarks/sklearn_model.py{' --quick' if args.quick else ''}`",
        "- Both sides fit the same forest (untimed) and check that every loaded model predicts exactly "
        "what the fitted one does. `log_model` is timed inside an active run; the loads use `runs:/` URIs. "
        "MLflow's defaults infer pip requirements by loading the model in a subprocess; the second table "
        "of each format passes `pip_requirements` to skip that. See the docstring of `sklearn_model.py`.",
        "- The `pyfunc predict` row runs the same scikit-learn code on both sides, so its ratio (ideally 1.0) "
        "shows how much noise the rest of the machine added to this run.",
        "",
    ]
    text = "\n".join(header + sections)
    print(text)
    if not args.quick:
        write_section(RESULTS, SECTION, text)
        print(f"[sklearn_model] section written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
