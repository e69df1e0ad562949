"""The proof, for every training integration: training SIGKILLed after a checkpoint and resumed ends
bit-identical to an uninterrupted run, in the same run, with each logged step exactly once.

One harness (kill_resume_harness.py) runs each script (scripts/) as reference, crash and resume
processes and checks what all integrations share; each case below adds what is particular to it.

* plain PyTorch ``explicit``: Adam + per-epoch StepLR, a ResumableLoader, ``log_checkpoint`` every 5 steps
  and ``cairn.pytorch.resume``; ``autolog``: SGD momentum + per-step StepLR, a plain DataLoader and nothing
  but ``autolog(checkpoint_every_n_steps=5, resume=True)``. Killed mid-epoch 1, after the checkpoint of
  step 10, with steps 11 and 12 logged.
* a nanoGPT-style loop (no DataLoader, ``torch.randint`` batches, gradient accumulation, hand-set lr, a
  prefetched batch, random evaluations) under ``autolog(resume=True)`` + ``track_state``, killed after
  the checkpoint of step 10 with steps 11 and 12 logged.
* Lightning: ``Trainer.fit`` with CairnLogger + CairnCheckpointCallback, killed at global step 23 after
  the checkpoint of step 20, resumed with ``fit(ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))``.
* Transformers: a tiny BERT ``Trainer`` with CairnCallback, killed after logging step 12, resumed from
  ``cairn.transformers.checkpoint_path(run_id, "latest")`` (``checkpoint-8``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import cairn
from tests.checkpoint.kill_resume_harness import KillResumeCase, KillResumeResult, kill_and_resume

SCRIPTS = Path(__file__).resolve().parent / "scripts"


# -- plain PyTorch --------------------------------------------------------------------------------------------


def _plain_checkpoints_at_kill(store: str, run_id: str) -> None:
    from cairn.checkpoint import runs

    cairn.set_tracking_uri(store)
    assert [i.step for i in runs.list_run_checkpoints(run_id)] == [5, 10]  # the dead process got this far


def _plain(mode: str, keys: tuple[str, ...]) -> KillResumeCase:
    return KillResumeCase(
        name=f"pytorch-{mode}",
        command=(str(SCRIPTS / "train_resume.py"), mode),
        metric_keys=keys,
        steps=tuple(range(1, 25)),
        dead_steps=tuple(range(1, 13)),
        superseded_steps=(11, 12),
        after_kill=_plain_checkpoints_at_kill,
    )


def _check_plain(result: KillResumeResult) -> None:
    assert "CHECKPOINTED" in result.crash_output  # the kill came after the checkpoint's upload


def _check_nanogpt(result: KillResumeResult) -> None:
    from cairn.checkpoint import runs

    _check_plain(result)
    best = "best_val_loss.txt"  # the loop's own state, saved with track_state, came back
    assert (result.resumed_dir / best).read_text() == (result.reference_dir / best).read_text()
    cairn.set_tracking_uri(result.store)
    assert [i.step for i in runs.list_run_checkpoints(result.run_id)][-1] == 20  # the final checkpoint


# -- Lightning ------------------------------------------------------------------------------------------------


def _lightning_uploaded(step: int) -> Callable[[str, str], bool]:
    def uploaded(store: str, run_id: str) -> bool:
        """Uploads are asynchronous: wait until the run's checkpoint index lists ``step``."""
        from cairn.lightning import _integration

        cairn.set_tracking_uri(store)
        artifacts = cairn.Client().artifact_store(run_id)
        index_path = f"{_integration.CHECKPOINTS_DIR}/{_integration.INDEX_FILE}"
        if not artifacts.exists(index_path):
            return False
        with artifacts.open(index_path) as handle:
            return step in {entry["global_step"] for entry in json.load(handle)["checkpoints"]}

    return uploaded


def _check_lightning(result: KillResumeResult) -> None:
    # "last" is the newest upload: last.ckpt of step 20, or the top-k file of the same step if the kill came first
    restored = torch.load(result.report["restored_from"], weights_only=True)
    assert restored["global_step"] == 20
    cairn.set_tracking_uri(result.store)
    val = [(m.step, m.value) for m in cairn.Client().get_metric_history(result.run_id, "val_loss")]
    cairn.set_tracking_uri(result.reference_store)
    reference = cairn.Client().get_metric_history(result.reference_run_id, "val_loss")
    assert val == [(m.step, m.value) for m in reference]
    assert len(val) == 3  # one validation per epoch


# -- Transformers ---------------------------------------------------------------------------------------------


def _check_transformers(result: KillResumeResult) -> None:
    from safetensors.torch import load_file

    import cairn.transformers

    assert any(line.startswith("COMMITTED 8") for line in result.crash_output)
    assert result.report["restored_from"] == "checkpoint-8"
    cairn.set_tracking_uri(result.store)
    client = cairn.Client()
    run = client.get_run(result.run_id)
    assert run.data.tags["cairn.transformers.resumed_from_step"] == "8"
    remote = sorted(f.path for f in client.list_artifacts(result.run_id, "checkpoints"))
    assert remote == ["checkpoints/checkpoint-16", "checkpoints/checkpoint-24"]  # save_total_limit=2
    final = cairn.transformers.load_model(f"runs:/{result.run_id}/model", return_type="components")
    reference = load_file(str(result.reference_dir / "final.safetensors"))
    loaded = final["model"].state_dict()
    assert all(torch.equal(tensor, loaded[key]) for key, tensor in reference.items())


# -- the cases ------------------------------------------------------------------------------------------------

CASES = [
    pytest.param(_plain("explicit", ("loss",)), _check_plain, id="pytorch-explicit"),
    pytest.param(_plain("autolog", ("loss", "lr")), _check_plain, id="pytorch-autolog"),
    pytest.param(
        KillResumeCase(
            name="nanogpt-style",
            command=(str(SCRIPTS / "nanogpt_roles.py"),),
            metric_keys=("loss", "lr"),
            steps=tuple(range(1, 21)),
            dead_steps=tuple(range(1, 13)),
            superseded_steps=(11, 12),
            kill_marker="READY",
            after_kill=_plain_checkpoints_at_kill,
        ),
        _check_nanogpt,
        id="nanogpt-style",
    ),
    pytest.param(
        KillResumeCase(
            name="lightning",
            command=(str(SCRIPTS / "train_lightning_resume.py"),),
            metric_keys=("loss",),
            steps=tuple(range(3 * 13)),  # 3 epochs of 13 batches, logged at global steps 0..38
            dead_steps=tuple(range(23)),  # logged up to step 22, beyond the checkpoint (log step 19)
            superseded_steps=(20, 21, 22),
            ready_for_kill=_lightning_uploaded(20),
        ),
        _check_lightning,
        id="lightning",
        marks=pytest.mark.skipif(not importlib.util.find_spec("lightning"), reason="lightning is not installed"),
    ),
    pytest.param(
        KillResumeCase(
            name="transformers",
            command=(str(SCRIPTS / "train_transformers_resume.py"),),
            metric_keys=("loss", "grad_norm", "learning_rate"),
            steps=tuple(range(2, 25, 2)),  # logging_steps=2, max_steps=24
            dead_steps=tuple(range(2, 13, 2)),  # logged through step 12, past the checkpoint of step 8
            superseded_steps=(10, 12),
        ),
        _check_transformers,
        id="transformers",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not importlib.util.find_spec("transformers"), reason="transformers is not installed"),
        ],
    ),
]


@pytest.mark.parametrize(("case", "check"), CASES)
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical_to_an_uninterrupted_run(
    case: KillResumeCase, check: Callable[[KillResumeResult], None], tmp_path: Path
) -> None:
    result = kill_and_resume(case, tmp_path)
    check(result)


def test_the_harness_catches_a_resume_that_silently_restarts_inside_the_run(tmp_path: Path) -> None:
    """Issue 14's first silent case: the run continues by id but training starts over. The weights still
    match (same seeds), so it is the step-once check that must fail: steps 1..12 are logged twice."""
    broken = dataclasses.replace(
        _plain("explicit", ("loss",)), name="restarting", command=(str(SCRIPTS / "train_resume.py"), "restarting")
    )
    with pytest.raises(AssertionError, match=r"restarting/loss: steps \[1, 1, 2, 2, "):
        kill_and_resume(broken, tmp_path)
