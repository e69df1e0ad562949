"""Plain PyTorch with cairn: autolog, a SIGKILL mid-epoch, an exact resume in the same run, then the model
logged with its signature, registered, aliased ``@champion`` and used through ``pyfunc``.

This is the script ``./scripts/demo.sh`` runs. Run it yourself with::

    python examples/pytorch_resume.py                   # into ./cairn-runs (or $CAIRN_TRACKING_URI)
    python examples/pytorch_resume.py --store /tmp/runs # into another store

What it does, each step a separate process, as in real life:

1. trains a small MLP (shuffled DataLoader, dropout: the RNG matters) with
   ``cairn.pytorch.autolog(checkpoint_every_n_steps=...)`` and kills it with SIGKILL once a checkpoint
   is in the store and a few steps later, in the middle of an epoch;
2. starts the same training again with ``CAIRN_RUN_ID=<run id>``: ``autolog(resume=True)`` restores
   weights, optimizer, scheduler, RNG and the DataLoader position, and the run goes on at the next step;
3. checks what it claims: one run, each step's ``loss`` once, weights ``torch.equal`` to an
   uninterrupted run trained meanwhile by another process in a throwaway store;
4. registers the model the resumed run logged (``cairn.pytorch.log_model(..., input_example=...)``),
   sets the alias ``champion`` and predicts through ``cairn.pyfunc.load_model("models:/...@champion")``.

``--small`` (or ``CAIRN_EXAMPLE_SMALL=1``) trains fewer steps. Exit status 0 only if every check held.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

EXPERIMENT = "pytorch-resume"
MODEL_NAME = "demo-mlp"
SAMPLES, FEATURES, CLASSES, BATCH = 400, 8, 3, 16  # 25 steps per epoch
CHECKPOINT_EVERY = 15  # the first checkpoint falls in the middle of the first epoch (step 15 of 25)
KILL_AFTER = 3  # steps after the first checkpoint


def small() -> bool:
    return os.environ.get("CAIRN_EXAMPLE_SMALL", "") not in ("", "0") or "--small" in sys.argv


def say(text: str = "") -> None:
    print(text, flush=True)


# -- the training script (what the user writes; the child processes run this) ------------------------------


def train(out: Path, epochs: int, paced: bool) -> None:
    """An ordinary PyTorch loop; autolog does the logging, the checkpoints and the resume.

    ``paced``: after each step, wait for a line on stdin. The demo steps the first training one step at a
    time this way, so that it kills it at a known point (a few steps after its first checkpoint reached the
    store) however fast or loaded the machine is. Pausing between steps changes nothing in the training.
    """
    import torch
    from safetensors.torch import save_file
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import cairn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    # resume=True: with CAIRN_RUN_ID set, continue that run from its newest checkpoint; else a new run
    state = cairn.pytorch.autolog(checkpoint_every_n_steps=CHECKPOINT_EVERY, resume=True, log_models=False)
    if state.resumed:
        say(f"@resumed {state.step} {state.epoch}")

    gen = torch.Generator().manual_seed(42)
    x = torch.randn(SAMPLES, FEATURES, generator=gen)
    y = (x[:, :3].sum(dim=1) > 0).long() + (x[:, 3] > 1).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=25, gamma=0.7)

    step = state.step
    for epoch in range(state.epoch, epochs):
        for batch_x, batch_y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch_x), batch_y).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            run = cairn.active_run()  # autolog started it at the first step (or resumed it)
            say(f"@step {step} {epoch} {run.info.run_id if run else None}")
            if paced:
                sys.stdin.readline()

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    if os.environ.get("DEMO_LOG_MODEL") == "1":
        # the signature is inferred from the input example: float32 (-1, 8) in, float32 (-1, 3) out
        info = cairn.pytorch.log_model(model, name="model", input_example=x[:4].numpy())
        say(f"@model {info.model_uri}")
    run = cairn.active_run()
    assert run is not None
    say(f"@run {run.info.run_id}")
    cairn.end_run()


# -- the demo: start, kill, resume, compare, register ------------------------------------------------------


def child(out: Path, epochs: int, env: dict[str, str], *, paced: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-u", __file__, "--role", "train", "--out", str(out), "--epochs", str(epochs)]
    return subprocess.Popen(
        [*command, "--paced"] if paced else command,
        env=env,
        stdin=subprocess.PIPE if paced else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def lines_of(proc: subprocess.Popen[str]) -> Any:
    """The child's protocol lines as (word, args); its other output (warnings, tracebacks) is echoed."""
    assert proc.stdout is not None
    for line in proc.stdout:
        words = line.split()
        if words and words[0].startswith("@"):
            yield words[0][1:], words[1:]
        elif line.strip():
            print(f"    | {line.rstrip()}", flush=True)


def wait_for_checkpoint(run_id: str, client: Any, timeout: float = 120.0) -> int:
    """The step of the run's first checkpoint, once it is committed in the store (autolog writes it in the
    background, right after step CHECKPOINT_EVERY)."""
    import cairn

    deadline = time.monotonic() + timeout
    while not (done := cairn.pytorch.list_run_checkpoints(run_id, client=client)):
        if time.monotonic() > deadline:
            fail(f"no checkpoint reached the store within {timeout:.0f} s")
        time.sleep(0.05)
    return int(done[0].step)


def fail(message: str) -> NoReturn:
    say(f"FAILED: {message}")
    raise SystemExit(1)


def demo(store: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="cairn-demo-"))  # the weights files and the reference's store
    try:
        run_demo(store, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_demo(store: str | None, work: Path) -> None:
    import torch
    from safetensors.torch import load_file

    import cairn

    if store:
        cairn.set_tracking_uri(store)
    uri = cairn.get_tracking_uri()
    shown = store or os.environ.get("CAIRN_TRACKING_URI") or uri  # as the user wrote it
    epochs = 2 if small() else 4
    steps = epochs * SAMPLES // BATCH
    env = {**os.environ, "CAIRN_TRACKING_URI": uri, "CAIRN_EXPERIMENT_NAME": EXPERIMENT, "PYTHONWARNINGS": "ignore"}
    env.pop("CAIRN_RUN_ID", None)
    env.pop("MLFLOW_RUN_ID", None)

    say(f"cairn demo: an MLP, {epochs} epochs of {SAMPLES // BATCH} steps, a checkpoint every {CHECKPOINT_EVERY}")
    say(f"  store: {shown}")
    # the uninterrupted reference trains meanwhile in another process, into a throwaway store
    reference = child(work / "reference", epochs, {**env, "CAIRN_TRACKING_URI": str(work / "ref")})

    say("\n1. training with cairn.pytorch.autolog() ...")
    crash = child(work / "crashed", epochs, env, paced=True)
    assert crash.stdin is not None
    run_id, checkpoint_step, killed_at = None, None, None
    client = cairn.Client()
    for word, args in lines_of(crash):
        if word != "step":
            continue
        step, epoch = int(args[0]), int(args[1])
        if run_id is None:
            run_id = args[2]
            say(f"   run {run_id} started")
        if checkpoint_step is None and step > CHECKPOINT_EVERY:
            checkpoint_step = wait_for_checkpoint(run_id, client)
            say(f"   checkpoint of step {checkpoint_step} is in the store")
        if checkpoint_step is not None and step >= checkpoint_step + KILL_AFTER:
            crash.send_signal(signal.SIGKILL)  # the child is between two steps, in the middle of an epoch
            killed_at = (step, epoch)
            break
        crash.stdin.write("\n")
        crash.stdin.flush()
    if crash.wait() != -signal.SIGKILL:
        fail("the training ended before it could be killed")
    assert killed_at is not None and run_id is not None and checkpoint_step is not None
    per_epoch = SAMPLES // BATCH
    batch = killed_at[0] - killed_at[1] * per_epoch
    say(f"   kill -9 after step {killed_at[0]} (epoch {killed_at[1] + 1}, batch {batch} of {per_epoch}): no cleanup")
    logged = [m.step for m in client.get_metric_history(run_id, "loss")]
    status = client.get_run(run_id).info.status.value
    say(f"   in the store: the run is {status}, loss up to step {max(logged, default=0)} (flushed before the kill)")

    say(f"\n2. the same script again with CAIRN_RUN_ID={run_id} ...")
    resumed = child(work / "resumed", epochs, {**env, "CAIRN_RUN_ID": run_id, "DEMO_LOG_MODEL": "1"})
    resumed_run, model_uri = None, None
    for word, args in lines_of(resumed):
        if word == "resumed":
            say(f"   resumed at step {args[0]} (epoch {int(args[1]) + 1}): weights, optimizer, scheduler, RNG and data")
            say("   position restored from its checkpoint")
        elif word == "run":
            resumed_run = args[0]
        elif word == "model":
            model_uri = args[0]
    if resumed.wait() != 0 or reference.wait() != 0:
        fail("a training process failed (its output is above)")
    for _ in lines_of(reference):
        pass

    say("\n3. checks")
    final = client.get_run(run_id)
    history = [m.step for m in client.get_metric_history(run_id, "loss")]
    superseded = len(client.get_metric_history(run_id, "loss", include_superseded=True)) - len(history)
    same_run = resumed_run == run_id
    continuous = history == list(range(1, steps + 1))
    resumed_weights = load_file(str(work / "resumed" / "final.safetensors"))
    reference_weights = load_file(str(work / "reference" / "final.safetensors"))
    identical = resumed_weights.keys() == reference_weights.keys() and all(
        torch.equal(resumed_weights[k], reference_weights[k]) for k in reference_weights
    )
    say(f"   same run: {same_run} ({run_id}, {final.info.status.value})")
    say(f"   loss logged at steps 1..{steps}, each once: {continuous}")
    if superseded:
        say(f"   ({superseded} point(s) the killed process logged after its checkpoint: kept, marked superseded)")
    say(f"   weights identical to an uninterrupted run (torch.equal on {len(reference_weights)} tensors): {identical}")
    if not (same_run and continuous and identical and final.info.status.value == "FINISHED"):
        fail("the resume did not give the uninterrupted run's result")

    say("\n4. the model")
    assert model_uri is not None
    version = cairn.register_model(model_uri, MODEL_NAME)
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    say(f"   logged with its signature: {model_uri}")
    say(f"   registered as {MODEL_NAME} version {version.version}, alias @champion")
    predictor = cairn.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    sample = torch.randn(3, FEATURES, generator=torch.Generator().manual_seed(7)).numpy()
    predictions = predictor.predict(sample)
    say(f"   pyfunc predict on 3 rows -> classes {predictions.argmax(axis=1).tolist()}")

    cli = (
        "cairn" if store is None and not os.environ.get("CAIRN_TRACKING_URI") else f"cairn --store {shlex.quote(shown)}"
    )
    say("\nlook further:")
    commands = [
        (f"{cli} ui", "runs, curves, checkpoints, the registry in a browser"),
        (f"{cli} models serve -m models:/{MODEL_NAME}@champion", "the model behind a REST endpoint"),
        (f"{cli} runs describe {run_id}", "the run in the terminal"),
    ]
    width = max(len(command) for command, _ in commands)
    for command, what in commands:
        say(f"  {command.ljust(width)}   # {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="tracking store (default: $CAIRN_TRACKING_URI, else ./cairn-runs)")
    parser.add_argument("--small", action="store_true", help="fewer steps (also CAIRN_EXAMPLE_SMALL=1)")
    parser.add_argument("--role", choices=["demo", "train"], default="demo", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "train":
        train(args.out, args.epochs, args.paced)
    else:
        demo(args.store)


if __name__ == "__main__":
    main()
