"""``cairn.autolog()``: every integration, each enabled when the script imports its framework; ``report_to="cairn"``.

Each case runs in a fresh interpreter, since what is imported (and when) is the point.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning", "sklearn")


def _run(code: str, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "AutologWarning" not in done.stderr, done.stderr[-4000:]
    return done.stdout


def test_autolog_imports_no_framework_and_enables_each_when_it_is_imported(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    pytest.importorskip("sklearn")
    out = _run(
        f"""
        import sys
        import cairn

        cairn.autolog()
        loaded = [m for m in {FRAMEWORKS!r} if m in sys.modules]
        assert loaded == [], loaded
        assert not any(m.startswith("cairn.autolog.") and m.rsplit(".", 1)[1] in
                       ("pytorch", "lightning", "transformers", "sklearn") for m in sys.modules)

        import lightning  # imports torch on its way: enabling waits until lightning is complete
        from cairn.autolog import lightning as lt, pytorch as pt
        assert pt.is_enabled() and lt.is_enabled()
        assert "transformers.trainer" not in sys.modules and "sklearn" not in sys.modules

        from transformers import Trainer
        from transformers.integrations import integration_utils
        from cairn.autolog import transformers as tf
        assert tf.is_enabled()
        assert integration_utils.get_reporting_integration_callbacks(["cairn"]) == [tf.CairnCallback]

        import sklearn.linear_model
        from cairn.autolog import sklearn as sk
        assert sk.is_enabled()
        assert not any(type(f).__name__ == "ImportWatcher" for f in sys.meta_path)  # gone once all are on

        cairn.autolog(disable=True)
        assert not sk.is_enabled() and not lt.is_enabled() and not tf.is_enabled() and not pt.is_enabled()
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip().endswith("ok")


def test_autolog_enables_at_once_what_is_imported_already(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = _run(
        """
        import sys
        import torch
        import transformers.trainer
        import cairn

        cairn.autolog(log_models=False)
        from cairn.autolog import pytorch as pt, transformers as tf
        assert pt.active() is not None and pt.active().config.log_models is False
        assert tf.is_enabled() and tf._state.config.log_models_mode is None
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
        assert INTEGRATION_TO_CALLBACK["cairn"] is tf.CairnCallback
        print("sklearn" in sys.modules)
        """,
        tmp_path,
    )
    assert out.strip() == "False"


@pytest.mark.parametrize(
    "enable",
    ["cairn.autolog()", "cairn.transformers.autolog()", "cairn.transformers", "cairn.autolog.transformers.autolog()"],
)
def test_report_to_cairn_works_after(enable: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    _run(
        f"""
        import cairn
        import cairn.autolog.transformers
        from transformers.integrations import integration_utils

        try:
            integration_utils.get_reporting_integration_callbacks(["cairn"])
        except ValueError as exc:
            assert "cairn is not supported" in str(exc)
        else:
            raise AssertionError("report_to='cairn' known before cairn registered it")
        {enable}
        callbacks = integration_utils.get_reporting_integration_callbacks(["cairn"])
        assert callbacks == [cairn.autolog.transformers.CairnCallback], callbacks
        """,
        tmp_path,
    )


def _readme_report_to_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if 'report_to="cairn"' in b]
    return block


def test_the_readme_report_to_lines_run_and_one_integration_drives_the_trainer(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    preamble = f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from transformers import BertForSequenceClassification
        from tests.flavors.test_transformers import make_tokenizer, tiny_bert_config

        torch.manual_seed(0)
        torch.set_num_threads(1)
        tokenizer = make_tokenizer()
        model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
        train_dataset = [{{"input_ids": torch.randint(5, 20, (8,)), "labels": torch.tensor(i % 2)}} for i in range(16)]
        """
    check = """
        from collections import Counter
        client = cairn.Client()
        (run,) = cairn.search_runs(output_format="list")
        keys = run.data.metrics
        for key in keys:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (key, steps)
        assert "loss" in keys and not any(k == "lr" or k.startswith("lr/") for k in keys), sorted(keys)
        names = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert names == {"checkpoint-5", "checkpoint-10"}, names
        assert any(f.path == "model" for f in client.list_artifacts(run.info.run_id))
        print("ok")
        """
    code = textwrap.dedent(preamble) + _readme_report_to_block() + textwrap.dedent(check)
    assert _run(code, tmp_path, timeout=600).strip().endswith("ok")


def test_an_integration_enabled_on_its_own_keeps_its_options(tmp_path: Path) -> None:
    out = _run(
        """
        import torch, cairn, cairn.pytorch
        from cairn.autolog import pytorch as plain
        cairn.pytorch.autolog(checkpoint_every_n_steps=7, log_every_n_steps=3)
        cairn.autolog()
        print(plain.active().config.checkpoint_every_n_steps, plain.active().config.log_every_n_steps)
        cairn.autolog(disable=True)
        print(plain.active())
        """,
        tmp_path,
    )
    assert out.split() == ["7", "3", "None"]


def test_pytorch_autolog_enables_lightning_when_the_script_imports_it_later(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    out = _run(
        """
        import sys
        import torch, cairn, cairn.pytorch
        cairn.pytorch.autolog()
        assert "lightning" not in sys.modules
        import lightning
        from cairn.autolog import lightning as lt
        assert lt.is_enabled()
        assert not any(type(f).__name__ == "ImportWatcher" for f in sys.meta_path)  # removed once done
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip().endswith("ok")
