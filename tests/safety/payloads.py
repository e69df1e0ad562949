"""An attacker's payloads for the safety tests: each writes a marker file when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Marker:
    """Unpickling this writes a marker file: proof of whether a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))
