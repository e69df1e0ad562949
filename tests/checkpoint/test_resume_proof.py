"""The plain-PyTorch kill-and-resume proof moved to test_kill_and_resume.py (one harness for every
integration: kill_resume_harness.py). These subprocess helpers remain only for test_resume_no_dataloader.py,
whose nanoGPT-style proof is also a case of that harness; they go when it does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import cairn


def _wait_for(proc: subprocess.Popen[str], marker: str) -> list[str]:
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if line.strip() == marker:
            return seen
    proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    pytest.fail(f"the script ended before printing {marker} (saw {seen}); stderr:\n{stderr[-3000:]}")


def _finish(proc: subprocess.Popen[str]) -> None:
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]


def _curves(store: Path, run_id: str, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    cairn.set_tracking_uri(store)
    client = cairn.Client()
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
