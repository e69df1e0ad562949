"""What the background metric writer costs the training thread, by how often it wakes and how much it writes.

A training-like step on the main thread (a small CPU MLP, 32-64-64-10, batch 32, SGD with momentum, one
torch thread) logs ``--points`` metric points per step straight into a :class:`MetricBatcher` (the queue
``cairn.log_metric`` ends in, without the call's own checks, so the figure is the writer's interference and
the append). Configurations of the writer:

- ``queue only``: the writer sleeps through the timed window (points are only appended): the append's cost;
- ``every <s> s / <n> points``: the writer wakes every ``s`` seconds or when ``n`` points are queued and
  writes up to ``n`` points per transaction (``1 s / 10,000`` is the default).

Method (the machine is shared): one interpreter, one SQLite store; each round runs every configuration
once, in a rotated order, each as a pair of stretches: the loop without logging and the loop logging (the
no-logging one first in even rounds, last in odd ones).
A logging stretch logs for one writer interval untimed (so the writer is in its steady state), then for
``--seconds`` (at least three writer intervals) timed, then for one more interval untimed, then waits for
the writer to write the rest; its no-logging partner runs as long. Costs are per step (CPU / steps run).
The training thread's cost is its CPU time (``time.thread_time()``); overhead = median over rounds of
(logging stretch / its paired no-logging stretch) - 1. That pairing is at the mercy of the machine's load
over seconds, so the writer's interference is also measured within each logging stretch: its steps are
timed in blocks of 8, a block that overlapped a write of the writer (counted by a wrapper of the store)
is "busy", and the busy blocks' CPU above the median of the quiet blocks of the same stretch, divided by
the points written, is the training thread's CPU per point written. The writer's CPU per point is the
process CPU minus the training thread's over the timed window, divided by the points logged in it.

    .venv/bin/python benchmarks/writer_gil.py [--rounds 5] [--seconds 1.5] [--points 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cairn.store.base import MetricPoint, TrackingStore
from cairn.tracking import config
from cairn.tracking.batcher import MetricBatcher


@dataclass(frozen=True)
class WriterConfig:
    label: str
    interval: float
    wake_at: int
    writes_in_window: bool = True


CONFIGS = (
    WriterConfig("queue only (writer asleep)", 3600.0, 10**9, writes_in_window=False),
    WriterConfig("every 0.05 s / 10,000 points", 0.05, 10_000),
    WriterConfig("every 0.25 s / 10,000 points", 0.25, 10_000),
    WriterConfig("every 0.5 s / 20,000 points", 0.5, 20_000),
    WriterConfig("every 1 s / 10,000 points (default)", 1.0, 10_000),
)


class Trainer:
    """The training-like step: forward, backward, optimizer step of a small MLP."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x = torch.randn(32, 32)
        self.y = torch.randint(0, 10, (32,))
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


class CountingStore:
    """The store, counting the writer's batches as they start and finish (to tell which steps overlapped one)."""

    def __init__(self, store: TrackingStore) -> None:
        self.store = store
        self.started = 0
        self.finished = 0
        self.points = 0

    def log_metric_points(self, points: Sequence[MetricPoint]) -> None:
        self.started += 1
        self.points += len(points)
        try:
            self.store.log_metric_points(points)
        finally:
            self.finished += 1


@dataclass
class Stretch:
    thread_s: float
    process_s: float
    steps: int
    quiet_blocks: list[float] = field(default_factory=list)
    """Training-thread CPU of the blocks of ``BLOCK`` steps during which the writer did not write."""
    busy_blocks: list[float] = field(default_factory=list)
    """... and of those that overlapped a write."""
    points_written: int = 0


BLOCK = 8  # steps per block, a few ms: a write of a batch overlaps a few blocks


def run_stretch(
    trainer: Trainer,
    seconds: float,
    log: MetricBatcher | None,
    run_id: str,
    points: int,
    first: int,
    store: CountingStore | None = None,
) -> Stretch:
    keys = [f"m{i}" for i in range(points)]
    add = log.add if log is not None else None
    thread_time = time.thread_time
    t0, p0 = thread_time(), time.process_time()
    quiet: list[float] = []
    busy: list[float] = []
    points_before = store.points if store is not None else 0
    block_start, finished_at_start = t0, store.finished if store is not None else 0
    end = time.perf_counter() + seconds
    i = first
    while time.perf_counter() < end:
        value = trainer.step()
        if add is not None:
            now = time.time_ns() // 1_000_000
            for key in keys:
                add(MetricPoint(run_id, key, value, now, i))
        if store is not None and (i - first) % BLOCK == BLOCK - 1:
            block_end = thread_time()
            # a write overlapped the block if one started before its end and finished after its start
            (busy if store.started > finished_at_start else quiet).append(block_end - block_start)
            block_start, finished_at_start = block_end, store.finished
        i += 1
    stretch = Stretch(thread_time() - t0, time.process_time() - p0, i - first, quiet, busy)
    if store is not None:
        stretch.points_written = store.points - points_before
    return stretch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed logging per stretch")
    parser.add_argument("--points", type=int, default=4, help="metric points per step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        config.set_tracking_uri(tmp)
        store = config.get_store()
        run_id = store.create_run(
            "0", user_id="bench", start_time=int(time.time() * 1000), run_name="writer-gil"
        ).info.run_id
        trainer = Trainer()
        for _ in range(200):  # warm-up
            trainer.step()
        ratios: dict[str, list[float]] = {c.label: [] for c in CONFIGS}
        writer_us: dict[str, list[float]] = {c.label: [] for c in CONFIGS}
        interference_us: dict[str, list[float]] = {c.label: [] for c in CONFIGS}
        batch_sizes: dict[str, list[float]] = {c.label: [] for c in CONFIGS}
        base_us: list[float] = []
        step = 0
        for round_index in range(args.rounds):
            order = CONFIGS[round_index % len(CONFIGS) :] + CONFIGS[: round_index % len(CONFIGS)]
            for cfg in order:
                counting = CountingStore(store)
                batcher = MetricBatcher(
                    counting,  # type: ignore[arg-type]  # only log_metric_points is called
                    flush_interval=cfg.interval,
                    wake_at=cfg.wake_at,
                    max_batch=cfg.wake_at,
                )
                margin = cfg.interval + 0.05 if cfg.writes_in_window else 0.0
                timed = max(args.seconds, 3 * cfg.interval if cfg.writes_in_window else 0.0)
                base_first = round_index % 2 == 0  # ABBA: neither side always runs first
                if base_first:
                    base = run_stretch(trainer, timed, None, run_id, args.points, step)
                step += run_stretch(trainer, margin, batcher, run_id, args.points, step).steps  # steady state
                started = counting.started
                logged = run_stretch(trainer, timed, batcher, run_id, args.points, step, counting)
                batches = counting.started - started
                step += logged.steps
                step += run_stretch(trainer, margin, batcher, run_id, args.points, step).steps
                batcher.close()
                if not base_first:
                    base = run_stretch(trainer, timed, None, run_id, args.points, step)
                ratios[cfg.label].append((logged.thread_s / logged.steps) / (base.thread_s / base.steps))
                base_us.append(base.thread_s / base.steps * 1e6)
                if cfg.writes_in_window:
                    extra = (logged.process_s - logged.thread_s) - (base.process_s - base.thread_s)
                    writer_us[cfg.label].append(extra / (logged.steps * args.points) * 1e6)
                if logged.busy_blocks and logged.quiet_blocks and logged.points_written:
                    quiet = statistics.median(logged.quiet_blocks)
                    extra_busy = sum(block - quiet for block in logged.busy_blocks)
                    interference_us[cfg.label].append(extra_busy / logged.points_written * 1e6)
                    batch_sizes[cfg.label].append(logged.points_written / max(1, batches))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
        written = len(store.get_metric_history(run_id, "m0"))
        config.reset()
    print(f"\n{args.points} points per step, {args.rounds} rounds;")
    print(
        f"no-logging step: median {statistics.median(base_us):.1f} µs of training-thread CPU; {written} steps written"
    )
    print(
        "\n| writer | points per batch | training-thread CPU overhead (median; min .. max) "
        "| training-thread CPU while the writer writes, µs per point | writer CPU per point, µs |"
    )
    print("|---|---:|---:|---:|---:|")
    for cfg in CONFIGS:
        values = ratios[cfg.label]
        print(
            f"| {cfg.label} | {_median(batch_sizes[cfg.label], '.0f')} "
            f"| {100 * (statistics.median(values) - 1):+.1f}% ({100 * (min(values) - 1):+.1f}% .. "
            f"{100 * (max(values) - 1):+.1f}%) | {_median(interference_us[cfg.label], '.2f')} "
            f"| {_median(writer_us[cfg.label], '.2f')} |"
        )


def _median(values: list[float], spec: str) -> str:
    return format(statistics.median(values), spec) if values else "—"


if __name__ == "__main__":
    main()
