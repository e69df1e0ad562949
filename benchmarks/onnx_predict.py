"""ONNX predict benchmark: pyfunc latency and throughput through onnxruntime vs the native frameworks.

Four models, each converted once with ``cairn.onnx.save_model`` (conversion + parity check timed):

- ``mlp``: torch ``Linear(64, 256) -> ReLU -> Linear(256, 256) -> ReLU -> Linear(256, 10)``, float32 input;
- ``cnn``: torch ``Conv2d(1, 16, 3) -> ReLU -> MaxPool(2) -> Conv2d(16, 32, 3) -> ReLU -> MaxPool(2) -> Linear``
  on 1x28x28 images;
- ``sk-logreg``: scikit-learn ``StandardScaler -> LogisticRegression`` on 20 features, 3 classes;
- ``sk-forest``: ``RandomForestClassifier(100 trees, max_depth=10)`` on 20 features.

Each is called with batches of 1 row (latency: every call timed with ``perf_counter_ns``; p50 and
p99) and 1,024 rows (throughput: rows/s over repeated calls). Contenders:

- ``cairn onnx pyfunc``: ``cairn.pyfunc.load_model(dir).predict(x)``: signature enforcement, dtype
  cast (the scikit-learn models get float64 input and cast it to float32), onnxruntime session
  run (default session options: all cores), outputs packed (a dict of label and probabilities
  for the classifiers);
- ``onnxruntime run``: ``session.run(None, {name: x})`` on the same session with input already in the
  graph's dtype: the floor for the pyfunc;
- ``native``: the torch module under ``torch.inference_mode()``, or the estimator's
  ``predict_proba`` on float64 input (the work closest to the ONNX graph, which computes labels and
  probabilities);
- ``cairn native pyfunc``: ``cairn.pyfunc.load_model`` of the model saved with ``cairn.pytorch`` /
  ``cairn.sklearn`` (``n/a`` if that flavor cannot save or load it here).

Every contender uses the same number of threads (``--threads``, default 1: torch's intra-op threads,
onnxruntime's ``intra_op_num_threads``, BLAS/OpenMP through threadpoolctl), so none gets more cores
than another and a shared machine's load disturbs them alike. Contenders take turns in rounds (3
by default); each figure is the median over rounds.

    /work/main/.venv/bin/python benchmarks/onnx_predict.py [--quick] [--rounds 3]

Appends (or replaces) its section in ``benchmarks/RESULTS.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE))

from _common import write_section  # noqa: E402 - needs the path above

SECTION = "onnx_predict"
CONTENDERS = ("cairn onnx pyfunc", "onnxruntime run", "native", "cairn native pyfunc")


def _torch_models() -> dict[str, tuple[Any, Callable[[int], np.ndarray]]]:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).eval()
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 5 * 5, 10),
    ).eval()
    rng = np.random.default_rng(0)
    return {
        "mlp": (mlp, lambda n: rng.standard_normal((n, 64)).astype(np.float32)),
        "cnn": (cnn, lambda n: rng.standard_normal((n, 1, 28, 28)).astype(np.float32)),
    }


def _sklearn_models() -> dict[str, tuple[Any, Callable[[int], np.ndarray]]]:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=5000, n_features=20, n_informative=10, n_classes=3, random_state=0)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1).fit(X, y)
    rng = np.random.default_rng(1)
    return {
        "sk-logreg": (logreg, lambda n: rng.standard_normal((n, 20))),
        "sk-forest": (forest, lambda n: rng.standard_normal((n, 20))),
    }


def _latency(call: Callable[[], Any], calls: int, budget_s: float) -> dict[str, float]:
    """p50/p99 of ``calls`` timed calls, or of as many as fit in ``budget_s`` (at least 20)."""
    for _ in range(min(20, calls)):
        call()
    times: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < calls and (len(times) < 20 or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    times.sort()
    n = len(times)
    return {"p50_us": times[n // 2] / 1000, "p99_us": times[min(n - 1, 99 * n // 100)] / 1000, "calls": n}


def _throughput(call: Callable[[], Any], rows: int, seconds: float) -> float:
    call()
    done = 0
    start = time.perf_counter()
    while True:
        call()
        done += rows
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def _native_pyfunc(kind: str, model: Any, example: np.ndarray, directory: Path) -> tuple[Any, str]:
    """(cairn native-flavor pyfunc model or None, note)."""
    import cairn.pyfunc

    path = directory / f"native-{kind}-{id(model)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "torch":
                from cairn.flavors import pytorch

                pytorch.save_model(model, path, input_example=example)
            else:
                from cairn.flavors import sklearn

                sklearn.save_model(model, path, input_example=example)
            return cairn.pyfunc.load_model(path, allow_pickle=True), ""
    except Exception as exc:  # the flavor may not handle this model here; the table says so
        return None, f"{type(exc).__name__}: {str(exc)[:120]}"


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    import cairn.onnx
    import cairn.pyfunc

    models: dict[str, tuple[str, Any, Callable[[int], np.ndarray]]] = {}
    for name, (model, make) in _torch_models().items():
        models[name] = ("torch", model, make)
    for name, (model, make) in _sklearn_models().items():
        models[name] = ("sklearn", model, make)

    results: dict[str, Any] = {"models": {}, "notes": {}}
    with tempfile.TemporaryDirectory(prefix="cairn-bench-onnx-") as tmp:
        directory = Path(tmp)
        contenders: dict[str, dict[str, Callable[[np.ndarray], Any]]] = {}
        inputs: dict[str, dict[int, np.ndarray]] = {}
        for name, (kind, model, make) in models.items():
            print(f"[onnx_predict] converting {name} ...", file=sys.stderr, flush=True)
            example = make(8)
            start = time.perf_counter()
            saved = cairn.onnx.save_model(model, directory / name, input_example=example)
            convert_s = time.perf_counter() - start
            parity = (saved.metadata or {}).get("onnx_parity", {})
            options = {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1}
            pyfunc = cairn.pyfunc.load_model(directory / name, model_config={"onnx_session_options": options})
            session = pyfunc.get_raw_model()
            input_name = session.get_inputs()[0].name
            native_pyfunc, note = _native_pyfunc(kind, model, example, directory)
            if note:
                results["notes"][name] = note
            if kind == "torch":

                def native(x: np.ndarray, model: Any = model) -> Any:
                    with torch.inference_mode():
                        return model(torch.from_numpy(x))

            else:
                native = model.predict_proba
            calls: dict[str, Callable[[np.ndarray], Any]] = {
                "cairn onnx pyfunc": pyfunc.predict,
                "onnxruntime run": lambda x, s=session, n=input_name: s.run(None, {n: x.astype(np.float32)}),
                "native": native,
            }
            if native_pyfunc is not None:
                calls["cairn native pyfunc"] = native_pyfunc.predict
            contenders[name] = calls
            inputs[name] = {1: make(1), 1024: make(1024)}
            results["models"][name] = {
                "kind": kind,
                "convert_s": convert_s,
                "max_abs_diff": parity.get("max_abs_diff"),
                "onnx_bytes": (directory / name / "onnx" / "model.onnx").stat().st_size,
                "latency": {c: [] for c in calls},
                "throughput": {c: [] for c in calls},
            }
        for round_index in range(args.rounds):
            print(f"[onnx_predict] round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for name, calls in contenders.items():
                one, batch = inputs[name][1], inputs[name][1024]
                for contender, call in calls.items():
                    if contender == "onnxruntime run":  # the floor: input already in the graph's dtype
                        one, batch = one.astype(np.float32), batch.astype(np.float32)
                    entry = results["models"][name]
                    entry["latency"][contender].append(
                        _latency(lambda c=call, x=one: c(x), args.calls, 2 * args.seconds)
                    )
                    entry["throughput"][contender].append(_throughput(lambda c=call, x=batch: c(x), 1024, args.seconds))
                    one, batch = inputs[name][1], inputs[name][1024]
    results["versions"] = {
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "sklearn": __import__("sklearn").__version__,
        "onnx": __import__("onnx").__version__,
        "skl2onnx": __import__("skl2onnx").__version__,
        "torch_threads": torch.get_num_threads(),
    }
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _report(results: dict[str, Any], args: argparse.Namespace, load: tuple[float, float, float]) -> str:
    versions = results["versions"]
    lines = [
        "## ONNX predict: pyfunc through onnxruntime vs native torch and scikit-learn",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at start "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; {os.cpu_count()} CPUs",
        f"- Python {platform.python_version()}, onnxruntime {versions['onnxruntime']}, onnx {versions['onnx']}, "
        f"torch {versions['torch']}, scikit-learn {versions['sklearn']}, skl2onnx {versions['skl2onnx']}",
        f"- Threads: {args.threads} for torch, onnxruntime (`intra_op_num_threads`) and BLAS/OpenMP "
        "(`threadpoolctl`) alike, so no contender gets more cores than another (`--threads` to change)",
        f"- Command: `/work/main/.venv/bin/python benchmarks/onnx_predict.py{' --quick' if args.quick else ''}`; "
        f"median of {args.rounds} rounds; batch 1: {args.calls:,} timed calls per round (fewer for a "
        f"contender slower than {2 * args.seconds:g} s for them, at least 20); batch 1024: {args.seconds:g} s "
        "of calls per round",
        "- What each contender runs: see the docstring of `onnx_predict.py`. `native` for the scikit-learn "
        "models is `predict_proba` on float64; the ONNX pyfunc computes labels and probabilities from float64 "
        "input cast to float32.",
        "",
        "### Batch 1: latency per call (µs, p50 / p99)",
        "",
        "| model | " + " | ".join(CONTENDERS) + " | onnx pyfunc vs native |",
        "|---|" + "---:|" * len(CONTENDERS) + "---|",
    ]
    for name, entry in results["models"].items():
        cells = []
        p50s: dict[str, float] = {}
        for contender in CONTENDERS:
            samples = entry["latency"].get(contender)
            if not samples:
                cells.append("n/a")
                continue
            p50 = _median([s["p50_us"] for s in samples])
            p99 = _median([s["p99_us"] for s in samples])
            p50s[contender] = p50
            cells.append(f"{_fmt(p50, 1)} / {_fmt(p99, 1)}")
        ratio = p50s["native"] / p50s["cairn onnx pyfunc"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_speed(ratio)} |")
    overhead = []
    for name, entry in results["models"].items():
        p50 = {c: _median([s["p50_us"] for s in entry["latency"][c]]) for c in ("cairn onnx pyfunc", "onnxruntime run")}
        overhead.append(f"{name} +{p50['cairn onnx pyfunc'] - p50['onnxruntime run']:.1f}")
    lines += [
        "",
        "What the pyfunc adds to a bare `session.run` per call at batch 1 (p50, µs: signature enforcement, "
        "dtype cast, feeds, output packing): " + ", ".join(overhead) + ".",
    ]
    lines += [
        "",
        "### Batch 1024: throughput (rows/s)",
        "",
        "| model | " + " | ".join(CONTENDERS) + " | onnx pyfunc vs native |",
        "|---|" + "---:|" * len(CONTENDERS) + "---|",
    ]
    for name, entry in results["models"].items():
        cells = []
        rates: dict[str, float] = {}
        for contender in CONTENDERS:
            samples = entry["throughput"].get(contender)
            if not samples:
                cells.append("n/a")
                continue
            rates[contender] = _median(samples)
            cells.append(_fmt(rates[contender]))
        ratio = rates["cairn onnx pyfunc"] / rates["native"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_speed(ratio)} |")
    lines += [
        "",
        "### Conversion (`cairn.onnx.save_model`: export or skl2onnx, onnx.checker, parity check on 8 rows)",
        "",
        "| model | seconds | max abs diff on the example | model.onnx bytes |",
        "|---|---:|---:|---:|",
    ]
    for name, entry in results["models"].items():
        diff = entry["max_abs_diff"]
        lines.append(
            f"| {name} | {entry['convert_s']:.2f} | {diff:.2e} | {entry['onnx_bytes']:,} |"
            if diff is not None
            else f"| {name} | {entry['convert_s']:.2f} | n/a | {entry['onnx_bytes']:,} |"
        )
    for name, note in results["notes"].items():
        lines.append(f"\n`cairn native pyfunc` for {name} is n/a: {note}")
    return "\n".join(lines) + "\n"


def _speed(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="timed batch-1 calls per round")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds of batch-1024 calls per round")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch, onnxruntime and BLAS alike")
    parser.add_argument("--quick", action="store_true", help="1 round, 300 calls, 0.3 s; print only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls, args.seconds = 1, 300, 0.3
    load = os.getloadavg()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        results = _measure(args)
    report = _report(results, args, load)
    print(report)
    if not args.quick:
        write_section(RESULTS, SECTION, report)


if __name__ == "__main__":
    main()
