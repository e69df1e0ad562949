"""``cairn models serve`` startup: the non-loopback warning, models that cannot load (failing before binding)."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

import cairn
from cairn.cli import main
from tests.server.conftest import free_port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve(*args: str) -> tuple[int, str, int]:
    """``cairn models serve ARGS`` in-process on a free port; returns as soon as it fails (it must, to return)."""
    port = free_port()
    result = CliRunner().invoke(main, ["models", "serve", "--port", str(port), *args])
    return result.exit_code, " ".join(result.output.split()), port  # unwrap the terminal-width error line


def test_a_missing_model_fails_before_binding(tmp_path: Path) -> None:
    code, output, port = _serve("-m", str(tmp_path / "nothing-here"))
    assert code == 1
    assert output.startswith("error:") and "nothing-here" in output and "does not exist" in output
    assert _port_is_free(port)


def test_non_loopback_host_warns_first(tmp_path: Path) -> None:
    code, output, _ = _serve("-m", str(tmp_path / "nothing-here"), "--host", "0.0.0.0")
    assert code == 1
    assert "warning: binding to 0.0.0.0 with no authentication" in output
    assert "anyone reaching this port can call the model" in output
    code, output, _ = _serve("-m", str(tmp_path / "nothing-here"), "--host", "localhost")
    assert code == 1 and "warning" not in output


def test_an_unknown_registered_model_fails_clearly() -> None:
    code, output, port = _serve("-m", "models:/no-such-model/1")
    assert code == 1
    assert output.startswith("error:") and "no-such-model" in output
    assert _port_is_free(port)


def test_a_pickled_model_needs_the_opt_in(tmp_path: Path) -> None:
    class AddOne(cairn.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input + 1

    path = tmp_path / "custom"
    cairn.pyfunc.save_model(path, python_model=AddOne(), input_example=pd.DataFrame({"x": [1.0]}))
    code, output, port = _serve("-m", str(path))
    assert code == 1
    assert output.startswith("error:") and "allow_pickle=True" in output
    assert _port_is_free(port)
