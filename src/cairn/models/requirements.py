"""Record the environment a model needs: ``requirements.txt``, ``python_env.yaml`` and ``conda.yaml``.

The files have MLflow's layout, so ``mlflow models serve`` and other MLflow tooling can rebuild the
environment. Versions are the installed ones (``importlib.metadata``), with local labels such as
``+cpu`` removed as MLflow does, because PyPI cannot install ``torch==2.13.0+cpu``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path

import yaml

from cairn.errors import InvalidArgument

__all__ = [
    "CONDA_ENV_FILENAME",
    "PYTHON_ENV_FILENAME",
    "REQUIREMENTS_FILENAME",
    "pinned_requirement",
    "read_requirements",
    "write_requirements",
]

REQUIREMENTS_FILENAME = "requirements.txt"
PYTHON_ENV_FILENAME = "python_env.yaml"
CONDA_ENV_FILENAME = "conda.yaml"
_BUILD_PACKAGES = ("pip", "setuptools", "wheel")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cairn_version() -> str:
    version = _installed_version("cairn")
    if version is None:
        import cairn

        version = str(getattr(cairn, "__version__", "0"))
    return version


def pinned_requirement(requirement: str) -> str:
    """``"torch"`` -> ``"torch==2.13.0"`` from the installed version; a requirement with a version
    specifier (``"numpy>=1.24"``) is returned unchanged.

    Raises:
        InvalidArgument: the package is not installed, so no version can be pinned.
    """
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise InvalidArgument(f"not a package requirement: {requirement!r}")
    name, extras, rest = match.group(1), match.group(2) or "", match.group(3).strip()
    if rest:
        return requirement.strip()
    version = _installed_version(name)
    if version is None:
        raise InvalidArgument(f"package {name!r} is not installed, so its version cannot be recorded")
    return f"{name}{extras}=={version.split('+', 1)[0]}"


def write_requirements(model_dir: str | os.PathLike[str], packages: list[str]) -> dict[str, str]:
    """Write the three environment files for a model that needs ``packages`` (plus cairn).

    Args:
        model_dir: the model directory (must exist).
        packages: distribution names of the frameworks the model uses (``["torch"]``,
            ``["scikit-learn", "cloudpickle"]``), optionally with extras or a version specifier.

    Returns:
        The ``env`` entry for the ``python_function`` flavor:
        ``{"conda": "conda.yaml", "virtualenv": "python_env.yaml"}``.
    """
    lines = [f"cairn=={_cairn_version()}"]
    seen = {"cairn"}
    for package in packages:
        line = pinned_requirement(package)
        match = _REQUIREMENT.match(line)
        key = _canonical(match.group(1)) if match else line
        if key not in seen:
            seen.add(key)
            lines.append(line)
    directory = Path(model_dir)
    (directory / REQUIREMENTS_FILENAME).write_text("\n".join(lines) + "\n")

    python_version = platform.python_version()
    build = []
    for name in _BUILD_PACKAGES:
        version = _installed_version(name)
        build.append(f"{name}=={version}" if version else name)
    python_env = {
        "python": python_version,
        "build_dependencies": build,
        "dependencies": [f"-r {REQUIREMENTS_FILENAME}"],
    }
    with open(directory / PYTHON_ENV_FILENAME, "w") as out:
        yaml.safe_dump(python_env, out, sort_keys=False, default_flow_style=False)

    pip_version = _installed_version("pip")
    conda_deps: list[object] = [f"python={python_version}", f"pip<={pip_version}" if pip_version else "pip"]
    conda_deps.append({"pip": lines})
    conda_env = {"name": "cairn-env", "channels": ["conda-forge"], "dependencies": conda_deps}
    with open(directory / CONDA_ENV_FILENAME, "w") as out:
        yaml.safe_dump(conda_env, out, default_flow_style=False)
    return {"conda": CONDA_ENV_FILENAME, "virtualenv": PYTHON_ENV_FILENAME}


def read_requirements(model_dir: str | os.PathLike[str]) -> list[str]:
    """The requirement lines of a model's ``requirements.txt`` (comments and blanks dropped)."""
    path = Path(model_dir) / REQUIREMENTS_FILENAME
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]
