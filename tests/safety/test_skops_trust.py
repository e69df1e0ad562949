"""What a skops file may name: cairn decides by name, from modules already imported, and imports nothing the file names.

Each hostile file here is a real skops archive written by skops and then edited (its ``schema.json``),
as an attacker would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")
pytest.importorskip("skops", reason="skops is not installed (pip install 'cairn[sklearn]')")

import scipy.sparse
import skops.io as skops_io
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import cairn.sklearn
from cairn.errors import UnsafeModel
from cairn.flavors import sklearn as flavor

X = np.abs(np.random.default_rng(0).normal(size=(40, 3)))
Y = (X[:, 0] > np.median(X[:, 0])).astype(int)


def _edit_schema(path: Path, edit: Any) -> None:
    """Rewrite the ``schema.json`` inside the skops archive at ``path`` with ``edit(schema)``."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(members["schema.json"])
    edit(schema)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def _transformer_file(path: Path, func: Any = np.log1p) -> Path:
    skops_io.dump(FunctionTransformer(func=func).fit(X), path)
    return path


def _set_func(node: dict[str, Any]) -> Any:
    def edit(schema: dict[str, Any]) -> None:
        schema["content"]["content"]["func"] = node

    return edit


def _function_node(module: str, name: str) -> dict[str, Any]:
    return {"__class__": name, "__module__": module, "__loader__": "FunctionNode", "__id__": 1}


def _string_node(value: str, node_id: int) -> dict[str, Any]:
    content = json.dumps(value)
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": content, "is_json": True,
            "__id__": node_id}  # fmt: skip


# -- nothing the file names is imported --------------------------------------------------------------------


def test_a_file_naming_a_main_module_does_not_run_it(tmp_path: Path) -> None:
    """numpy.f2py.__main__ runs f2py's command line when imported (SystemExit out of load_model before)."""
    path = _transformer_file(tmp_path / "f2py.skops")
    _edit_schema(path, _set_func(_function_node("numpy.f2py.__main__", "main")))
    script = textwrap.dedent(
        f"""
        import sys
        from cairn.errors import UnsafeModel
        from cairn.flavors import sklearn as flavor
        try:
            flavor.load_skops({str(path)!r})
        except UnsafeModel as exc:
            print("refused:", exc)
        print("imported:", "numpy.f2py.__main__" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused:" in done.stdout and "numpy.f2py.__main__.main" in done.stdout
    assert "imported: False" in done.stdout


def test_a_file_naming_a_module_not_yet_imported_does_not_import_it(tmp_path: Path) -> None:
    """Importing sklearn.experimental.enable_halving_search_cv changes sklearn.model_selection: a real side effect."""
    module = "sklearn.experimental.enable_halving_search_cv"
    assert module not in sys.modules
    path = _transformer_file(tmp_path / "side-effect.skops")
    _edit_schema(path, _set_func(_function_node(module, "HalvingGridSearchCV")))
    with pytest.raises(UnsafeModel, match=module.replace(".", r"\.")):
        flavor.load_skops(path)
    assert not flavor.is_trusted_type(f"{module}.HalvingGridSearchCV")
    assert module not in sys.modules


# -- functions: a narrow allow-list ------------------------------------------------------------------------


def test_a_function_that_execs_its_argument_is_refused(tmp_path: Path) -> None:
    path = _transformer_file(tmp_path / "runstring.skops")
    _edit_schema(path, _set_func(_function_node("numpy.testing", "runstring")))
    with pytest.raises(UnsafeModel, match=r"numpy\.testing\.runstring") as refused:
        flavor.load_skops(path)
    assert "trusted_types=" in str(refused.value)
    assert not flavor.is_trusted_type("numpy.testing.runstring")
    assert not flavor.is_trusted_type("numpy.testing._private.utils.runstring")


def test_the_refusal_is_the_same_through_a_saved_model(tmp_path: Path) -> None:
    cairn.sklearn.save_model(FunctionTransformer(func=np.log1p).fit(X), tmp_path / "m")
    (tmp_path / "m" / "cairn_files.json").unlink()  # a model from another tool: no manifest to notice the edit
    meta_path = tmp_path / "m" / "MLmodel"
    meta_path.write_text("\n".join(line for line in meta_path.read_text().splitlines() if "cairn_files" not in line))
    _edit_schema(tmp_path / "m" / "model.skops", _set_func(_function_node("numpy.testing", "runstring")))
    with pytest.raises(UnsafeModel, match=r"numpy\.testing\.runstring"):
        cairn.sklearn.load_model(tmp_path / "m")
    with pytest.raises(UnsafeModel, match=r"numpy\.testing\.runstring"):
        cairn.pyfunc.load_model(tmp_path / "m")


@pytest.mark.parametrize("func", [np.log1p, np.expm1, np.sqrt, np.clip, np.nan_to_num, np.round])
def test_functions_transformers_commonly_use_still_load(tmp_path: Path, func: Any) -> None:
    path = _transformer_file(tmp_path / "ok.skops", func)
    assert flavor.load_skops(path).func is func


def test_the_function_allow_list_is_by_name() -> None:
    assert flavor.is_trusted_type("numpy.log1p")  # a numpy ufunc
    assert flavor.is_trusted_type("numpy.clip")  # a named numpy function
    assert not flavor.is_trusted_type("numpy.load")  # reads files (and pickles with allow_pickle=True)
    assert not flavor.is_trusted_type("numpy.save")
    assert not flavor.is_trusted_type("numpy.f2py.run_main")
    assert not flavor.is_trusted_type("sklearn.utils._testing.check_output")  # subprocess's, imported there


def test_a_caller_can_still_trust_a_function_by_name(tmp_path: Path) -> None:
    path = _transformer_file(tmp_path / "t.skops")
    _edit_schema(path, _set_func(_function_node("numpy", "cumsum")))
    with pytest.raises(UnsafeModel, match=r"numpy\.cumsum"):
        flavor.load_skops(path)
    assert flavor.load_skops(path, trusted_types=["numpy.cumsum"]).func is np.cumsum


# -- types: estimator and array types, not every class in numpy/scipy -------------------------------------


def test_a_class_that_writes_files_is_refused(tmp_path: Path) -> None:
    """scipy.io.FortranFile(path, "w") creates the file: a skops file must not be able to call it."""
    marker = tmp_path / "outside" / "pwned.marker"
    marker.parent.mkdir()
    path = _transformer_file(tmp_path / "writer.skops")
    arguments = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "__id__": 2,
                 "content": [_string_node(str(marker), 3), _string_node("w", 4)]}  # fmt: skip
    writer = {"__class__": "FortranFile", "__module__": "scipy.io._fortran",
              "__loader__": "ConstructorFromReduceNode", "content": arguments, "__id__": 5}  # fmt: skip
    _edit_schema(path, _set_func(writer))
    with pytest.raises(UnsafeModel, match=r"scipy\.io\._fortran\.FortranFile"):
        flavor.load_skops(path)
    assert not marker.exists()
    assert not flavor.is_trusted_type("numpy.memmap")  # an ndarray subclass that opens (and creates) files


def test_estimators_trees_and_arrays_still_load(tmp_path: Path) -> None:
    models: dict[str, Any] = {
        "forest": RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y),
        "hist": HistGradientBoostingClassifier(max_iter=3).fit(X, Y),
        "pipeline": make_pipeline(FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression()).fit(X, Y),
    }
    for name, model in models.items():
        path = tmp_path / f"{name}.skops"
        skops_io.dump(model, path)
        np.testing.assert_array_equal(flavor.load_skops(path).predict(X), model.predict(X))
    state = {"sparse": scipy.sparse.csr_matrix(X), "rng": np.random.default_rng(0), "scalar": np.float32(1.5)}
    skops_io.dump(state, tmp_path / "state.skops")
    loaded = flavor.load_skops(tmp_path / "state.skops")
    assert (loaded["sparse"] != state["sparse"]).nnz == 0 and loaded["scalar"] == np.float32(1.5)
    for name in ("sklearn.tree._tree.Tree", "scipy.sparse._csr.csr_matrix", "numpy.float64", "numpy.ndarray"):
        assert flavor.is_trusted_type(name), name


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(cairn.sklearn.SkopsUnsupported, match=r"numpy\.cumsum"):
        cairn.sklearn.save_model(FunctionTransformer(func=np.cumsum).fit(X), tmp_path / "m")
    assert not (tmp_path / "m").exists()
