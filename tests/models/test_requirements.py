"""requirements.txt, python_env.yaml and conda.yaml pin the installed versions, in MLflow's layout."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import pytest
import yaml

from cairn.errors import InvalidArgument
from cairn.models import pinned_requirement, read_requirements, write_requirements


def test_files_pin_installed_versions(tmp_path: Path) -> None:
    env = write_requirements(tmp_path, ["torch", "numpy", "NumPy", "pandas>=2.0"])
    assert env == {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}

    torch_version = importlib.metadata.version("torch").split("+")[0]  # the local label (+cpu) is dropped
    expected = [
        f"cairn=={importlib.metadata.version('cairn')}",
        f"torch=={torch_version}",
        f"numpy=={importlib.metadata.version('numpy')}",
        "pandas>=2.0",
    ]
    assert read_requirements(tmp_path) == expected
    assert (tmp_path / "requirements.txt").read_text() == "\n".join(expected) + "\n"

    python_env = yaml.safe_load((tmp_path / "python_env.yaml").read_text())
    assert list(python_env) == ["python", "build_dependencies", "dependencies"]
    assert python_env["python"] == platform.python_version()
    assert [dep.split("==")[0] for dep in python_env["build_dependencies"]] == ["pip", "setuptools", "wheel"]
    assert f"pip=={importlib.metadata.version('pip')}" in python_env["build_dependencies"]
    assert python_env["dependencies"] == ["-r requirements.txt"]

    conda = yaml.safe_load((tmp_path / "conda.yaml").read_text())
    assert conda["channels"] == ["conda-forge"]
    assert conda["dependencies"][0] == f"python={platform.python_version()}"
    assert conda["dependencies"][1] == f"pip<={importlib.metadata.version('pip')}"
    assert conda["dependencies"][2] == {"pip": expected}


def test_pinned_requirement_keeps_extras_and_specifiers() -> None:
    assert pinned_requirement("pyyaml") == f"pyyaml=={importlib.metadata.version('pyyaml')}"
    assert pinned_requirement("pandas[performance]").startswith("pandas[performance]==")
    assert pinned_requirement("numpy<3") == "numpy<3"


def test_missing_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="package 'no-such-package-xyz' is not installed"):
        write_requirements(tmp_path, ["no-such-package-xyz"])
    with pytest.raises(InvalidArgument, match="not a package requirement"):
        pinned_requirement("==1.0")
