"""A model's ``code/`` directory (MLflow's ``code_paths``) is code: it goes on ``sys.path`` only with the opt-in.

The attack: a safe-format (skops) model gains ``code/skops/__init__.py``. Files added after saving are
not in the model's manifest, so the integrity check does not object; if ``code/`` went first on
``sys.path``, loading the model would import that file instead of the installed skops.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")
pytest.importorskip("skops", reason="skops is not installed (pip install 'cairn[sklearn]')")

from sklearn.linear_model import LogisticRegression

import cairn.sklearn
from cairn import safety
from cairn.errors import UnsafeModel
from cairn.models import loading

X = np.random.default_rng(0).normal(size=(30, 3))
Y = (X[:, 0] > 0).astype(int)


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # whatever a load appends is dropped after the test


def _hostile_model(tmp_path: Path, marker: Path) -> Path:
    """A real skops model saved with a harmless code path, then given ``code/skops/__init__.py``."""
    helper = tmp_path / "src" / "c41rn_helper_mod.py"
    helper.parent.mkdir()
    helper.write_text("VALUE = 1\n")
    model_dir = tmp_path / "m"
    cairn.sklearn.save_model(LogisticRegression().fit(X, Y), model_dir, code_paths=[helper])
    evil = model_dir / "code" / "skops"
    evil.mkdir()
    (evil / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    return model_dir


def _load_in_fresh_python(model_dir: Path, allow_pickle: bool) -> str:
    """Load the model three ways in a new interpreter (skops not yet imported there); the output says how each went."""
    script = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("always")
        import cairn.models, cairn.pyfunc, cairn.sklearn
        from cairn.errors import UnsafeModel
        for load in (cairn.sklearn.load_model, cairn.pyfunc.load_model, cairn.models.load_model):
            try:
                load({str(model_dir)!r}, allow_pickle={allow_pickle!r})
                print("loaded")
            except UnsafeModel as exc:
                print("refused:", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_code_shipped_in_a_safe_model_does_not_run_without_the_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.marker"
    model_dir = _hostile_model(tmp_path, marker)
    output = _load_in_fresh_python(model_dir, allow_pickle=False)
    assert not marker.exists(), output
    assert output.count("refused:") == 3, output
    assert str(model_dir / "code") in output and "allow_pickle=True" in output and "CAIRN_ALLOW_PICKLE=1" in output


def test_with_the_opt_in_the_code_cannot_shadow_an_installed_package(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.marker"
    model_dir = _hostile_model(tmp_path, marker)
    output = _load_in_fresh_python(model_dir, allow_pickle=True)
    assert not marker.exists(), output
    assert output.count("loaded") == 3, output
    assert "skops" in output and "not used" in output  # the shadowing name is reported


def test_the_refusal_names_the_directory_and_its_modules(tmp_path: Path) -> None:
    (tmp_path / "code" / "mypkg").mkdir(parents=True)
    (tmp_path / "code" / "helpers.py").write_text("")
    before = list(sys.path)
    with pytest.raises(UnsafeModel) as refused:
        loading.add_code_to_path(tmp_path, "code")
    message = str(refused.value)
    assert str(tmp_path / "code") in message and "helpers, mypkg" in message
    assert "sys.path" in message and "allow_pickle=True" in message and "CAIRN_ALLOW_PICKLE=1" in message
    assert sys.path == before


def test_the_opt_in_appends_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "c41rn_only_here.py").write_text("VALUE = 7\n")
    loading.add_code_to_path(tmp_path, "code", allow_pickle=True)
    assert sys.path[-1] == str(tmp_path / "code")
    spec = importlib.util.find_spec("c41rn_only_here")
    assert spec is not None and spec.origin == str(tmp_path / "code" / "c41rn_only_here.py")
    sys.path.remove(str(tmp_path / "code"))
    monkeypatch.setenv(safety.ALLOW_PICKLE_ENV, "1")
    loading.add_code_to_path(tmp_path, "code")
    assert sys.path[-1] == str(tmp_path / "code")


def test_a_name_an_installed_or_imported_module_has_is_reported_and_not_used(tmp_path: Path) -> None:
    for name in ("json", "numpy", "c41rn_fresh_name"):
        (tmp_path / "code" / name).mkdir(parents=True)
        (tmp_path / "code" / name / "__init__.py").write_text("raise RuntimeError('the model code ran')\n")
    with pytest.warns(UserWarning) as caught:
        loading.add_code_to_path(tmp_path, "code", allow_pickle=True)
    message = " ".join(str(w.message) for w in caught)
    assert "json" in message and "numpy" in message and "c41rn_fresh_name" not in message
    assert importlib.util.find_spec("json").origin != str(tmp_path / "code" / "json" / "__init__.py")  # type: ignore[union-attr]


def test_a_model_without_code_modules_loads_as_before(tmp_path: Path) -> None:
    cairn.sklearn.save_model(LogisticRegression().fit(X, Y), tmp_path / "m")
    (tmp_path / "m" / "code" / "__pycache__").mkdir(parents=True)  # not named by the MLmodel file, nothing importable
    np.testing.assert_array_equal(
        cairn.sklearn.load_model(tmp_path / "m").predict(X), LogisticRegression().fit(X, Y).predict(X)
    )
    (tmp_path / "empty" / "code").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.add_code_to_path(tmp_path / "empty", "code")  # an empty code/ changes nothing: no refusal
    assert str(tmp_path / "empty" / "code") not in sys.path


def test_trusting_every_module_of_the_directory_is_an_opt_in_too(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "c41rn_pkg_a.py").write_text("")
    (tmp_path / "code" / "c41rn_pkg_b.py").write_text("")
    with safety.trusted_modules(("c41rn_pkg_a",)), pytest.raises(UnsafeModel, match="c41rn_pkg_b"):
        loading.add_code_to_path(tmp_path, "code")  # one module of the directory is not trusted
    assert str(tmp_path / "code") not in sys.path
    with safety.trusted_modules(("c41rn_pkg_a", "c41rn_pkg_b")):
        loading.add_code_to_path(tmp_path, "code")
    assert sys.path[-1] == str(tmp_path / "code")
