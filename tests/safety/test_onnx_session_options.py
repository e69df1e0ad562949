"""ONNX models are hostile input: the onnxruntime options an MLmodel file records must not make
onnxruntime read or write files outside the model directory.

onnxruntime's session config entries include paths (``session.model_external_initializers_file_folder_path``
reads the weights from another folder; ``session.collect_node_memory_stats_to_file`` writes a file
anywhere), and execution providers take options that name paths. Only an allow-list written in cairn
(thread counts, optimization level, execution mode, a few path-free config entries) is applied from
the file; everything else is refused with :class:`~cairn.errors.UnsafeModel` naming the key. Options
the caller passes at load time are the caller's choice and apply as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'cairn[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cairn[onnx]')")

import onnx
from onnx import TensorProto, helper, numpy_helper

import cairn.onnx
import cairn.pyfunc
from cairn.errors import InvalidArgument, UnsafeModel

SIZE = 2048  # bytes of the weight tensor: above the size that goes to external data
SECRET = b"root:x:0:0:root:/root:/bin/bash\n".ljust(SIZE, b"#")
READ_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
WRITE_FILE_KEY = "session.collect_node_memory_stats_to_file"


def identity_of_weights() -> onnx.ModelProto:
    """y = x + W with W a uint8 initializer: the prediction on zeros is W's bytes, whatever file they came from."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [SIZE])
    weights = numpy_helper.from_array(np.zeros(SIZE, dtype=np.uint8), name="W")
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "leak", [x], [y], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model saved by cairn with its weights as external data (``onnx/model.onnx.data``)."""
    path = tmp_path / "model"
    cairn.onnx.save_model(identity_of_weights(), path, save_as_external_data=True)
    assert (path / "onnx" / "model.onnx.data").is_file()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the model holding a file named like the model's weights, with a secret in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "model.onnx.data").write_bytes(SECRET)
    return folder


def edit_mlmodel(model_dir: Path, edit: Any) -> None:
    """Rewrite the MLmodel file as an attacker would (``edit`` changes the parsed YAML in place)."""
    content = yaml.safe_load((model_dir / "MLmodel").read_text())
    edit(content)
    (model_dir / "MLmodel").write_text(yaml.safe_dump(content))


def record_session_options(model_dir: Path, options: dict[str, Any]) -> None:
    def edit(content: dict[str, Any]) -> None:
        content["flavors"]["onnx"]["onnx_session_options"] = options

    edit_mlmodel(model_dir, edit)


def predict_zeros(model: Any) -> bytes:
    return bytes(model.predict(np.zeros(SIZE, dtype=np.uint8)))


# -- reads and writes outside the model are refused ------------------------------------------------------


def test_a_recorded_folder_for_the_weights_is_refused_and_the_secret_never_read(model_dir: Path, outside: Path) -> None:
    record_session_options(model_dir, {"extra_session_config": {READ_FOLDER_KEY: str(outside)}})
    for load in (cairn.pyfunc.load_model, cairn.onnx.load_pyfunc):
        with pytest.raises(UnsafeModel, match=READ_FOLDER_KEY):
            predict_zeros(load(model_dir))


def test_a_recorded_output_file_is_refused_and_nothing_is_written(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned.marker"
    existing = tmp_path / "important.txt"
    existing.write_text("keep me")
    for target in (marker, existing):
        record_session_options(model_dir, {"extra_session_config": {WRITE_FILE_KEY: str(target)}})
        with pytest.raises(UnsafeModel, match=WRITE_FILE_KEY):
            predict_zeros(cairn.pyfunc.load_model(model_dir))
    assert not marker.exists()
    assert existing.read_text() == "keep me"


def test_options_recorded_in_the_pyfunc_config_are_checked_too(model_dir: Path, outside: Path, tmp_path: Path) -> None:
    """``python_function.config`` is also read from the file and reaches the loader as ``model_config``."""
    marker = tmp_path / "pwned.marker"

    def edit(content: dict[str, Any]) -> None:
        content["flavors"]["python_function"]["config"] = {
            "onnx_session_options": {
                "extra_session_config": {READ_FOLDER_KEY: str(outside), WRITE_FILE_KEY: str(marker)}
            }
        }

    edit_mlmodel(model_dir, edit)
    with pytest.raises(UnsafeModel, match=READ_FOLDER_KEY):
        predict_zeros(cairn.pyfunc.load_model(model_dir))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"ep.context_enable": "1", "ep.context_file_path": "/tmp/ctx.onnx"}, "ep.context_file_path"),
        ({"session.optimized_model_filepath": "/tmp/out.onnx"}, "session.optimized_model_filepath"),
        ({"session.node_partition_config_file": "/etc/passwd"}, "session.node_partition_config_file"),
        ({"session.intra_op.allow_spinning": "/etc/passwd"}, "session.intra_op.allow_spinning"),
        ({"session.dynamic_block_base": "../../x"}, "session.dynamic_block_base"),
    ],
)
def test_config_entries_off_the_allow_list_or_with_odd_values_are_refused(
    model_dir: Path, config: dict[str, str], named: str
) -> None:
    record_session_options(model_dir, {"extra_session_config": config})
    with pytest.raises(UnsafeModel, match=named):
        cairn.pyfunc.load_model(model_dir)


@pytest.mark.parametrize(
    "providers",
    [
        [["CPUExecutionProvider", {"trt_engine_cache_path": "/tmp/cache"}]],
        [["CUDAExecutionProvider", {"user_compute_stream": "140737488355328"}], "CPUExecutionProvider"],
        [["CPUExecutionProvider", {"device_id": "/etc/passwd"}]],
    ],
)
def test_recorded_provider_options_off_the_allow_list_are_refused(model_dir: Path, providers: list[Any]) -> None:
    def edit(content: dict[str, Any]) -> None:
        content["flavors"]["onnx"]["providers"] = providers

    edit_mlmodel(model_dir, edit)
    with pytest.raises(UnsafeModel, match="provider"):
        cairn.pyfunc.load_model(model_dir)


def test_absurd_recorded_thread_counts_are_refused(model_dir: Path) -> None:
    record_session_options(model_dir, {"intra_op_num_threads": 10**6})
    with pytest.raises(UnsafeModel, match="intra_op_num_threads"):
        cairn.pyfunc.load_model(model_dir)


# -- what stays allowed -----------------------------------------------------------------------------------


def test_allow_listed_options_from_the_file_are_applied(model_dir: Path) -> None:
    record_session_options(
        model_dir,
        {
            "intra_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": 2,
            "extra_session_config": {"session.intra_op.allow_spinning": "0", "session.set_denormal_as_zero": "1"},
        },
    )
    model = cairn.pyfunc.load_model(model_dir)
    applied = model.get_raw_model().get_session_options()
    assert applied.intra_op_num_threads == 1
    assert applied.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert predict_zeros(model) == bytes(SIZE)  # the model's own (zero) weights


def test_the_caller_may_pass_any_option_at_load(model_dir: Path, outside: Path, tmp_path: Path) -> None:
    """The caller's own options are not restricted (and this shows the attack above is real)."""
    leaked = cairn.onnx.load_pyfunc(
        model_dir, session_options={"extra_session_config": {READ_FOLDER_KEY: str(outside)}}
    )
    assert predict_zeros(leaked) == SECRET
    marker = tmp_path / "stats.txt"
    via_config = cairn.pyfunc.load_model(
        model_dir, model_config={"onnx_session_options": {"extra_session_config": {WRITE_FILE_KEY: str(marker)}}}
    )
    predict_zeros(via_config)
    del via_config  # onnxruntime writes the statistics when the session ends
    assert marker.exists()


def test_options_that_could_not_be_loaded_back_are_refused_at_save(tmp_path: Path, outside: Path) -> None:
    with pytest.raises(InvalidArgument, match=READ_FOLDER_KEY):
        cairn.onnx.save_model(
            identity_of_weights(),
            tmp_path / "never",
            onnx_session_options={"extra_session_config": {READ_FOLDER_KEY: str(outside)}},
        )
    with pytest.raises(InvalidArgument, match="trt_engine_cache_path"):
        cairn.onnx.save_model(
            identity_of_weights(),
            tmp_path / "never",
            onnx_execution_providers=[["CPUExecutionProvider", {"trt_engine_cache_path": str(outside)}]],
        )
    assert not (tmp_path / "never").exists()
    saved = cairn.onnx.save_model(
        identity_of_weights(),
        tmp_path / "fine",
        onnx_session_options={"extra_session_config": {"session.intra_op.allow_spinning": "0"}},
    )
    assert saved.flavors["onnx"]["onnx_session_options"] == {
        "extra_session_config": {"session.intra_op.allow_spinning": "0"}
    }
