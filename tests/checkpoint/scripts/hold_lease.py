"""A process that takes a run's resume lease (tests/checkpoint/test_lease.py).

Usage: python hold_lease.py RUN_ID MODE, with ``CAIRN_TRACKING_URI`` (and ``CAIRN_RESUME_LEASE_TTL``) set.

MODE ``hold``: take the lease, print ``HELD <owner>``, then obey stdin: ``release`` releases it and
prints ``RELEASED``; the process otherwise waits (to be killed). MODE ``exit``: take the lease, print
``HELD <owner>`` and leave the interpreter without releasing it (the atexit handler must). MODE ``try``:
take the lease; print ``REFUSED <message>`` and exit 3 on RunLeased. MODE ``resume``: resume the run from
its newest checkpoint into a ``Linear(2, 2)`` (the lease taken by the resume planner), print ``HELD
resumed at <step>`` and wait like ``hold``.
"""

from __future__ import annotations

import sys

import cairn
from cairn.checkpoint.lease import acquire_resume_lease
from cairn.errors import RunLeased


def main(run_id: str, mode: str) -> int:
    if mode == "resume":
        import torch

        from cairn.checkpoint.runs import resume

        state = resume(run_id, model=torch.nn.Linear(2, 2))
        print(f"HELD resumed at {state.step}", flush=True)
        sys.stdin.read()
        return 0
    try:
        lease = acquire_resume_lease(cairn.Client(), run_id)
    except RunLeased as refused:
        print(f"REFUSED {refused}", flush=True)
        return 3
    print(f"HELD {lease.owner}", flush=True)
    if mode == "hold":
        for line in sys.stdin:
            if line.strip() == "release":
                lease.release()
                print("RELEASED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
