"""The harness's roles (reference, crash, resume) for scripts/train_nanogpt_style.py, which takes
``OUT_DIR [KILL_AFTER_STEP]`` and prints ``READY`` (no run id) at its kill point.

Usage: python nanogpt_roles.py ROLE OUT_DIR; the ``resume`` role reads the run id from stdin and resumes
it through ``CAIRN_RUN_ID`` (the loop calls ``autolog(resume=True)``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

KILL_AFTER = 10

if __name__ == "__main__":
    role, out = sys.argv[1], Path(sys.argv[2])
    if role == "resume":
        os.environ["CAIRN_RUN_ID"] = sys.stdin.readline().strip()
    spec = importlib.util.spec_from_file_location(
        "train_nanogpt_style", Path(__file__).with_name("train_nanogpt_style.py")
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.train(out, KILL_AFTER if role == "crash" else None)
