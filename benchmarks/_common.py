"""Workload definitions shared by the cairn side and the MLflow side (stdlib only).

Both sides import this file, each from its own interpreter, so they log exactly the same data.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

INGEST_KEYS = ("loss", "accuracy", "learning_rate", "grad_norm")
SEARCH_METRICS = 20
SEARCH_PARAMS = 20
SEARCH_FILTER = "metrics.m3 > 0.5"
SEARCH_ORDER_BY = ["metrics.m7 DESC"]
SEARCH_PAGE = 100
RESULT_MARKER = "BENCH-RESULT "


def ingest_values(n: int, seed: int = 7) -> list[float]:
    """``n`` metric values; point ``i`` goes to key ``INGEST_KEYS[i % 4]`` at step ``i // 4``."""
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def run_data(index: int) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """Metrics ``m0..m19`` (uniform in [0, 1)) and params ``p0..p19`` of the search store's run ``index``."""
    rng = random.Random(1_000_003 * index + 11)
    metrics = [(f"m{j}", rng.random()) for j in range(SEARCH_METRICS)]
    params = [(f"p{j}", f"value-{rng.randrange(1000)}") for j in range(SEARCH_PARAMS)]
    return metrics, params


def latency_summary(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p99/p99.9/max of per-call latencies, in microseconds."""
    ordered = sorted(latencies_ns)
    n = len(ordered)
    return {
        "p50_us": ordered[n // 2] / 1000,
        "p99_us": ordered[min(n - 1, (99 * n) // 100)] / 1000,
        "p999_us": ordered[min(n - 1, (999 * n) // 1000)] / 1000,
        "max_us": ordered[-1] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


def emit(result: dict[str, Any]) -> None:
    """Print a result as one marked JSON line (the parent ignores every other output line)."""
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def write_section(results: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``results``.

    The section is replaced where it already is, appended otherwise; every other section is kept.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    current = results.read_text(encoding="utf-8") if results.exists() else ""
    if start in current and end in current:
        head, rest = current.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        updated = head + block + (("\n" + tail) if tail else "")
    else:
        updated = current.rstrip("\n") + ("\n\n" if current else "") + block
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(updated, encoding="utf-8")
