"""The distributed suite needs torch and safetensors (the ``cairn[torch]`` extra); without them it is not collected."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = (
    [] if importlib.util.find_spec("torch") and importlib.util.find_spec("safetensors") else ["test_*.py"]
)
