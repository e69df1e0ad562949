"""Lightning: training-loop overhead of CairnLogger / cairn autolog vs no logger and vs MLflow's autolog.

A small CPU MLP (32-64-64-10, ReLU) as a LightningModule, batch 32, SGD with momentum, one torch
thread, cross-entropy on random data from a shuffling ``DataLoader`` (1,600 samples); its
``training_step`` calls ``self.log("loss", loss)``. Each timed stretch is 2,000 optimizer steps of one
``trainer.fit`` (``max_steps`` = 100 warm-up steps + 2,000), ``log_every_n_steps=1``, no progress bar,
no model summary, no checkpointing. The clock starts at the first batch after the warm-up and stops at
the end of the last batch (a callback reads ``time.thread_time()`` and ``time.perf_counter()``), so
starting the run and the final flush are outside it; the flush (Lightning's ``finalize``) is reported
beside. Configurations:

- ``none``: ``Trainer(logger=False)``;
- ``control``: ``none`` against itself: the spread of the method on this machine, to read the others against;
- ``no-op logger``: a ``Logger`` subclass whose ``log_metrics`` does nothing: the work Lightning itself
  does for any logger each step (``.item()`` of the logged tensors, building the dict);
- ``CairnLogger``: ``Trainer(logger=cairn.lightning.CairnLogger())``;
- ``cairn autolog``: ``cairn.lightning.autolog(log_models=False)`` and ``Trainer(logger=False)``:
  CairnLogger plus CairnCheckpointCallback (resumable training DataLoader, RNG in checkpoints);
- ``cairn.pytorch.autolog``: ``cairn.pytorch.autolog(log_models=False)``, which turns the Lightning
  integration on too; its plain-loop hooks (optimizer, backward, DataLoader) stay installed and
  recognise Lightning's steps as not theirs;
- ``MLflow autolog``: ``mlflow.pytorch.autolog(log_every_n_step=1, log_models=False)`` and
  ``Trainer(logger=False)``, MLflow on ``sqlite:///``.

Each configuration runs in its own fresh interpreter (MLflow from this venv too), alternating ``none``
and itself ``--reps`` times (ABAB...), each fit logging into a fresh run of a fresh SQLite store, so
machine load falls on both alike; overhead = the median over the pairs of configuration / none - 1
within that interpreter (each stretch next to its no-logger stretch; the ratio of the fastest stretches
is reported too).

    /work/main/.venv/bin/python benchmarks/lightning_autolog.py [--quick] [--reps 5]

Appends (or replaces) its section in ``benchmarks/RESULTS.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE))

from _common import write_section  # noqa: E402 - needs the path above

SECTION = "lightning_autolog"
MARKER = "BENCH-RESULT "
CONFIGS = ("control", "noop_logger", "cairn_logger", "cairn_autolog", "cairn_pytorch_autolog", "mlflow_autolog")
LABELS = {
    "control": "control: `Trainer(logger=False)` on both sides (the method's noise)",
    "noop_logger": "no-op `Logger` (Lightning's own per-step logging work)",
    "cairn_logger": "`CairnLogger`",
    "cairn_autolog": "`cairn.lightning.autolog()` (CairnLogger + CairnCheckpointCallback)",
    "cairn_pytorch_autolog": "`cairn.pytorch.autolog()` (the above plus the plain-PyTorch hooks)",
    "mlflow_autolog": "`mlflow.pytorch.autolog(log_every_n_step=1)`",
}
TARGETED = ("cairn_logger", "cairn_autolog", "cairn_pytorch_autolog")


# -- the training (run inside a side interpreter) --------------------------------------------------------


def _build(steps: int, warmup: int) -> tuple[Any, Any, Any, dict[str, float]]:
    import lightning as L
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    clock: dict[str, float] = {}

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == warmup:
                clock["wall0"], clock["thread0"] = time.perf_counter(), time.thread_time()
                clock["process0"] = time.process_time()

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == warmup + steps:
                clock["wall"] = time.perf_counter() - clock["wall0"]
                clock["thread"] = time.thread_time() - clock["thread0"]
                clock["process"] = time.process_time() - clock["process0"]

    x, y = torch.randn(1600, 32), torch.randint(0, 10, (1600,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    return MLP, Timer, loader, clock


def side(config: str, reps: int, steps: int, warmup: int, workdir: Path) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.chdir(workdir)
    import lightning as L
    from lightning.pytorch.loggers.logger import Logger

    mlp, timer, loader, clock = _build(steps, warmup)

    class NoOpLogger(Logger):
        name = "noop"
        version = "0"

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            pass

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    cairn: Any = None
    mlflow: Any = None
    if config.startswith("cairn"):
        import cairn
        import cairn.lightning

        if config == "cairn_pytorch_autolog":
            import cairn.pytorch
        cairn.set_tracking_uri(workdir / "cairn-store")
    elif config.startswith("mlflow"):
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")

    def fit(kind: str) -> tuple[float, float, float, float]:
        logger: Any = False
        if kind == "noop_logger":
            logger = NoOpLogger()
        elif kind == "cairn_logger":
            logger = cairn.lightning.CairnLogger()
        elif kind == "cairn_autolog":
            cairn.lightning.autolog(log_models=False)
        elif kind == "cairn_pytorch_autolog":
            cairn.pytorch.autolog(log_models=False)
        elif kind == "mlflow_autolog":
            mlflow.pytorch.autolog(log_every_n_step=1, log_models=False, silent=True)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=warmup + steps,
            log_every_n_steps=1,
            logger=logger,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[timer()],
        )
        end: list[float] = []
        for attached in trainer.loggers:  # autolog's CairnLogger too

            def finalize(status: str, original: Any = attached.finalize) -> None:
                t0 = time.perf_counter()
                original(status)
                end.append(time.perf_counter() - t0)

            attached.finalize = finalize
        trainer.fit(mlp(), loader)
        if kind == "cairn_autolog":
            cairn.lightning.autolog(disable=True)
        elif kind == "cairn_pytorch_autolog":
            cairn.pytorch.autolog(disable=True)
        elif kind == "mlflow_autolog":
            mlflow.pytorch.autolog(disable=True)
        return clock["wall"], clock["thread"], clock["process"], sum(end)

    fit("none")  # warm-up of imports and first-fit setup, untimed
    fit(config)
    none_times, config_times = [], []
    for rep in range(reps):
        for kind in ("none", config) if rep % 2 == 0 else (config, "none"):
            (none_times if kind == "none" else config_times).append(fit(kind))
    result: dict[str, Any] = {"config": config, "steps": steps}
    for i, name in enumerate(("wall", "thread", "process")):
        result[f"ratio_{name}"] = statistics.median(c[i] / n[i] for c, n in zip(config_times, none_times, strict=True))
        result[f"none_{name}_s"] = min(t[i] for t in none_times)
        result[f"config_{name}_s"] = min(t[i] for t in config_times)
    result["finalize_s"] = statistics.median(t[3] for t in config_times)
    result["none_all"], result["config_all"] = none_times, config_times
    if cairn is not None:
        runs = cairn.search_runs(search_all_experiments=True, output_format="list")
        result["points_per_run"] = [len(cairn.Client().get_metric_history(r.info.run_id, "loss")) for r in runs]
    if config == "noop_logger":
        result["callback_us"] = _empty_callback_cost(mlp, timer, loader, clock, steps, warmup)
    if config == "cairn_logger":
        result["log_metrics_us"] = _log_metrics_cost(cairn)
        result["paired"] = _paired_blocks(cairn, mlp, loader, steps=6400, block=64)
    return result


def _empty_callback_cost(
    mlp: Any, timer: Any, loader: Any, clock: dict[str, float], steps: int, warmup: int, extra: int = 10, reps: int = 4
) -> float:
    """Training-thread CPU per step that Lightning spends dispatching its hooks to one more (empty) callback, in
    µs: fits with ``extra`` empty callbacks against fits without, alternating; fastest of each."""
    import lightning as L

    def fit(count: int) -> float:
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=warmup + steps,
            log_every_n_steps=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[timer(), *(L.Callback() for _ in range(count))],
        )
        trainer.fit(mlp(), loader)
        return clock["thread"]

    with_extra, without = [], []
    for _ in range(reps):
        without.append(fit(0))
        with_extra.append(fit(extra))
    return (min(with_extra) - min(without)) / extra / steps * 1e6


def _log_metrics_cost(cairn: Any, calls: int = 50_000) -> float:
    """Training-thread CPU of one ``CairnLogger.log_metrics`` call with Lightning's two metrics, in µs (hot loop)."""
    logger = cairn.lightning.CairnLogger()
    logger.log_metrics({"loss": 0.5, "epoch": 0}, step=0)
    start = time.thread_time()
    for step in range(1, calls + 1):
        logger.log_metrics({"loss": 0.5, "epoch": 0}, step=step)
    cost = (time.thread_time() - start) / calls * 1e6
    logger.finalize("success")
    return cost


def _paired_blocks(cairn: Any, mlp: Any, loader: Any, *, steps: int, block: int, rounds: int = 2) -> dict[str, Any]:
    """CairnLogger's marginal cost per step, from blocks of one fit that alternate between handing
    Lightning's metrics to CairnLogger and dropping them (a slow drift of the machine's load hits
    neighbouring blocks alike). A control fit alternates between two blocks that both drop them: its
    difference is the noise floor of the method. Blocks of 64 steps do not line up with the 50-batch epochs."""
    import lightning as L
    from lightning.pytorch.loggers.logger import Logger

    inner = cairn.lightning.CairnLogger()

    def difference(forward: bool) -> float:
        class Toggle(Logger):
            name = "toggle"
            version = "0"

            def log_metrics(self, metrics: Any, step: Any = None) -> None:
                if forward and (int(step or 0) // block) % 2 == 0:
                    inner.log_metrics(metrics, step)

            def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
                pass

        marks: list[float] = []

        class Blocks(L.Callback):
            def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step % block == 0:
                    marks.append(time.thread_time())

        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=steps + 2 * block,
            log_every_n_steps=1,
            logger=Toggle(),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[Blocks()],
        )
        trainer.fit(mlp(), loader)
        # durations[j - 1] is block j (steps j*block ..); block 0 is the warm-up; even blocks are the "on" ones
        durations = [(b - a) / block * 1e6 for a, b in itertools.pairwise(marks[1:])]
        on = [d for j, d in enumerate(durations, start=1) if j % 2 == 0]
        off = [d for j, d in enumerate(durations, start=1) if j % 2 == 1]
        return statistics.median(on) - statistics.median(off), statistics.median(off)

    cairn_runs, control_runs = [], []
    for _ in range(rounds):
        control_runs.append(difference(False))
        cairn_runs.append(difference(True))
    inner.finalize("success")
    return {
        "cairn_us": [d for d, _ in cairn_runs],
        "control_us": [d for d, _ in control_runs],
        "step_us": statistics.median(base for _, base in cairn_runs + control_runs),
        "steps": steps,
        "block": block,
    }


# -- the parent ------------------------------------------------------------------------------------------


def _run_side(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"side {args} failed:\n{done.stderr[-4000:]}")
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    raise SystemExit(f"side {args} printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _pct(ratio: float) -> str:
    return f"{ratio * 100:+.1f}%"


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


def _report(results: list[dict[str, Any]], args: argparse.Namespace, load: tuple[float, float, float]) -> str:
    spread = max(max(t[1] for t in r["none_all"]) / min(t[1] for t in r["none_all"]) - 1 for r in results)
    lines = [
        "## Lightning: CairnLogger / autolog overhead vs no logger and MLflow's autolog",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at start "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; {os.cpu_count()} CPUs",
        f"- Python {platform.python_version()}, torch {_version('torch')}, lightning {_version('lightning')}, "
        f"cairn {_version('cairn')}, MLflow {_version('mlflow')}",
        f"- Command: `{' '.join(['.venv/bin/python', 'benchmarks/lightning_autolog.py', *sys.argv[1:]])}`",
        "- MLP 32-64-64-10 LightningModule, batch 32, SGD momentum, one torch thread, shuffling DataLoader, "
        f"`self.log('loss', loss)` every step, `log_every_n_steps=1`; {args.reps} stretches of {args.steps:,} steps "
        f"(after {args.warmup} warm-up steps of the same fit) per configuration, alternating with "
        "`Trainer(logger=False)` in the same interpreter (see the docstring of `benchmarks/lightning_autolog.py`).",
        "- The target applies to the cost on the training thread, measured as that thread's CPU time "
        "(`time.thread_time()`), as the median over the pairs of each stretch's ratio to the no-logger stretch "
        "beside it (the same method as the plain-PyTorch benchmark); µs/step are the fastest stretches, and the "
        "ratio of the fastest stretches is shown beside. In this run the no-logger stretches of one interpreter "
        f"differed by up to {spread * 100:.0f}% from each other. Process CPU adds background threads (cairn's metric "
        "writer; MLflow's logging); wall-clock carries the machine's load.",
        "",
        "| configuration | training thread CPU, µs/step (no logger) | overhead | target | met? "
        "| overhead, fastest stretches | process CPU overhead | wall µs/step (no logger) | wall overhead "
        "| final flush, ms |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        steps = result["steps"]

        def per_step(key: str, result: dict[str, Any] = result, steps: int = steps) -> float:
            return float(result[key]) / steps * 1e6

        thread = result["ratio_thread"] - 1
        fastest = result["config_thread_s"] / result["none_thread_s"] - 1
        targeted = result["config"] in TARGETED
        no_flush = ("mlflow_autolog", "noop_logger", "control")
        flush = "—" if result["config"] in no_flush else f"{result['finalize_s'] * 1e3:,.1f}"
        lines.append(
            f"| {LABELS[result['config']]} "
            f"| {per_step('config_thread_s'):,.1f} ({per_step('none_thread_s'):,.1f}) | {_pct(thread)} "
            f"| {'<= 3%' if targeted else '—'} | {('yes' if thread <= 0.03 else 'no') if targeted else '—'} "
            f"| {_pct(fastest)} | {_pct(result['ratio_process'] - 1)} "
            f"| {per_step('config_wall_s'):,.1f} ({per_step('none_wall_s'):,.1f}) | {_pct(result['ratio_wall'] - 1)} "
            f"| {flush} |"
        )
    by_config = {r["config"]: r for r in results}
    lines.append("")
    control = by_config.get("control")
    if control:
        lines.append(
            f"- The control row (identical fits on both sides) came out at {_pct(control['ratio_thread'] - 1)}: how "
            "far two runs of the same fit drift apart in this run; an overhead within that spread is not resolved."
        )

    def per_step_none(result: dict[str, Any]) -> float:
        return float(result["none_thread_s"]) / result["steps"] * 1e6

    def added(result: dict[str, Any]) -> float:
        return (result["config_thread_s"] - result["none_thread_s"]) / result["steps"] * 1e6

    mlflow_result, cairn_result = by_config.get("mlflow_autolog"), by_config.get("cairn_logger")
    if mlflow_result and cairn_result:
        lines.append(
            f"- Per step on the training thread, MLflow's autolog adds {added(mlflow_result):,.0f} µs and "
            f"CairnLogger {added(cairn_result):,.0f} µs (each against its own no-logger stretches)."
        )
    if cairn_result and "log_metrics_us" in cairn_result:
        lines.append(
            f"- `CairnLogger.log_metrics` itself, called directly 50,000 times with Lightning's two metrics "
            f"(`loss`, `epoch`): {cairn_result['log_metrics_us']:.1f} µs of training-thread CPU per call "
            f"({cairn_result['log_metrics_us'] / per_step_none(cairn_result) * 100:.2f}% of a no-logger step)."
        )
    paired = (cairn_result or {}).get("paired")
    if paired:

        def listed(values: list[float]) -> str:
            return ", ".join(f"{v:+,.1f}" for v in values)

        lines.append(
            f"- Paired blocks, the steadiest figure here: in fits of {paired['steps']:,} steps, blocks of "
            f"{paired['block']} steps alternate between CairnLogger receiving Lightning's metrics and not. Extra "
            f"training-thread CPU per step in the CairnLogger blocks, per fit: {listed(paired['cairn_us'])} µs; in "
            f"control fits whose blocks all drop the metrics (the method's noise): {listed(paired['control_us'])} µs; "
            f"a step is {paired['step_us']:,.0f} µs."
        )
    callback_us = by_config.get("noop_logger", {}).get("callback_us")
    if callback_us is not None:
        lines.append(
            f"- Any Lightning callback costs the training thread {callback_us:,.1f} µs per step even when all its "
            "hooks are empty (Lightning calls every hook of every callback, each inside a profiler context): "
            "measured with 10 empty callbacks against none. CairnCheckpointCallback does nothing per step besides "
            "that (its work happens at epoch starts, at checkpoints and at the start and end of `fit`), so "
            "autolog's expected cost is CairnLogger's plus this."
        )
    points = by_config.get("cairn_logger", {}).get("points_per_run")
    if points:
        lines.append(
            f"- Every cairn run holds all its `loss` points (per run: {sorted(set(points))}; warm-up + timed steps)."
        )
    lines += [
        "- The no-op logger row is what Lightning itself spends per step once any logger is attached (it converts "
        "the logged tensors with `.item()` and assembles the metrics dict); CairnLogger's own work is the rest: one "
        "queued point per metric, no I/O on the training thread. The final flush is Lightning's `finalize`, which "
        "writes the queued points of the fit.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=CONFIGS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--workdir")
    parser.add_argument("--only", nargs="*", choices=CONFIGS)
    parser.add_argument("--quick", action="store_true", help="3 repetitions; print only")
    args = parser.parse_args()
    if args.side:
        result = side(args.side, args.reps, args.steps, args.warmup, Path(args.workdir))
        print(MARKER + json.dumps(result), flush=True)
        return
    if args.quick:
        args.reps = 3
    load = os.getloadavg()
    results = []
    for config in args.only or CONFIGS:
        with tempfile.TemporaryDirectory(prefix="cairn-bench-") as workdir:
            side_args = ["--side", config, "--reps", str(args.reps), "--steps", str(args.steps)]
            result = _run_side([*side_args, "--warmup", str(args.warmup), "--workdir", workdir])
        results.append(result)
        print(
            f"[lightning_autolog] {config}: thread CPU {result['ratio_thread'] - 1:+.1%}, "
            f"wall {result['ratio_wall'] - 1:+.1%} (medians of the pairs)",
            file=sys.stderr,
        )
    text = _report(results, args, load)
    print(text)
    if not args.quick and not args.only:
        write_section(RESULTS, SECTION, text)
        print(f"[lightning_autolog] section written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
