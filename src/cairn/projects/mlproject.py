"""MLflow Projects: read an ``MLproject`` file and turn an entry point and ``-P`` values into a command.

The file is hostile input: it is read with ``yaml.safe_load``, every key is checked against what
MLflow's format allows, and a ``{placeholder}`` in a command may only name a declared parameter
(no attribute access, index or format spec). Values are shell-quoted before substitution, ``path``
values must name an existing file or directory inside the project, and ``uri`` values are either a
URL with a scheme (kept as given) or a local path held to the same rule (it need not exist yet).
"""

from __future__ import annotations

import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from cairn.errors import InvalidArgument

FILE_NAMES = ("MLproject", "MLProject")
PARAMETER_TYPES = ("string", "float", "int", "path", "uri")
ENVIRONMENT_KEYS = ("conda_env", "python_env", "docker_env")
# Environment files MLflow picks up when the MLproject file does not name one.
DEFAULT_ENVIRONMENT_FILES = (("python_env", "python_env.yaml"), ("conda_env", "conda.yaml"))
_TOP_LEVEL_KEYS = {"name", "entry_points", *ENVIRONMENT_KEYS, "databricks_spark_job"}
_ENTRY_POINT_KEYS = {"command", "parameters"}
_PARAMETER_KEYS = {"type", "default"}
_MAX_FILE_BYTES = 1 << 20


class ProjectError(InvalidArgument):
    """An MLproject file, an entry point or a ``-P`` value that cairn cannot run (the message names it)."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str | None


@dataclass(frozen=True)
class EntryPoint:
    name: str
    command: str
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    """A parsed MLproject file.

    Attributes:
        directory: the resolved project directory (commands run there).
        file: the MLproject file that was read.
        environment: ``(key, file or image)`` for a declared (or MLflow-default) environment, else None.
    """

    directory: Path
    file: Path
    name: str | None
    entry_points: dict[str, EntryPoint]
    environment: tuple[str, str] | None


@dataclass(frozen=True)
class ResolvedCommand:
    """What runs: the shell command and the params to log (declared ones with defaults, then extras)."""

    command: str
    params: dict[str, str]


def find_file(directory: Path) -> Path | None:
    """The ``MLproject`` (or ``MLProject``) file of ``directory``, if it has one."""
    for name in FILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def load(directory: Path) -> Project:
    """Read and check the MLproject file of ``directory`` (ProjectError naming what is wrong)."""
    root = directory.resolve()
    path = find_file(root)
    if path is None:
        raise ProjectError(f"{directory} has no MLproject file")
    if not path.resolve().is_relative_to(root):
        raise ProjectError(f"{path}: a link to a file outside the project directory; not read")
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise ProjectError(f"{path}: larger than {_MAX_FILE_BYTES} bytes; not an MLproject file")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProjectError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ProjectError(f"{path}: must be a YAML mapping (name, entry_points, ...), got {type(document).__name__}")
    unknown = sorted(str(key) for key in document if key not in _TOP_LEVEL_KEYS)
    if unknown:
        raise ProjectError(
            f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_LEVEL_KEYS))}"
        )
    if "databricks_spark_job" in document:
        raise ProjectError(f"{path}: databricks_spark_job projects are not supported by cairn run")
    name = document.get("name")
    if name is not None and not isinstance(name, str):
        raise ProjectError(f"{path}: name must be a string")
    raw_entry_points = document.get("entry_points") or {}
    if not isinstance(raw_entry_points, dict):
        raise ProjectError(f"{path}: entry_points must be a mapping of entry point names")
    entry_points = {str(key): _entry_point(path, str(key), value) for key, value in raw_entry_points.items()}
    return Project(root, path, name, entry_points, _environment(path, root, document))


def _environment(path: Path, root: Path, document: dict[str, Any]) -> tuple[str, str] | None:
    declared = [key for key in ENVIRONMENT_KEYS if key in document]
    if len(declared) > 1:
        raise ProjectError(f"{path}: declares several environments ({', '.join(declared)}); give at most one")
    if declared:
        key = declared[0]
        value = document[key]
        if key == "docker_env":
            if not isinstance(value, dict) or not isinstance(value.get("image"), str):
                raise ProjectError(f"{path}: docker_env must be a mapping with an image")
            return key, value["image"]
        if not isinstance(value, str):
            raise ProjectError(f"{path}: {key} must be a file name")
        return key, value
    for key, default_file in DEFAULT_ENVIRONMENT_FILES:
        if (root / default_file).is_file():
            return key, default_file
    return None


def _entry_point(path: Path, name: str, value: Any) -> EntryPoint:
    where = f"{path}: entry point {name!r}"
    if not isinstance(value, dict):
        raise ProjectError(f"{where} must be a mapping with a command")
    unknown = sorted(str(key) for key in value if key not in _ENTRY_POINT_KEYS)
    if unknown:
        raise ProjectError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: command, parameters")
    command = value.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ProjectError(f"{where}: command must be a non-empty string")
    raw_parameters = value.get("parameters") or {}
    if not isinstance(raw_parameters, dict):
        raise ProjectError(f"{where}: parameters must be a mapping")
    parameters = {str(key): _parameter(where, str(key), spec) for key, spec in raw_parameters.items()}
    _placeholders(where, command, parameters)  # refuse a bad template now, not after the run started
    return EntryPoint(name, command, parameters)


def _parameter(where: str, name: str, spec: Any) -> Parameter:
    where = f"{where}, parameter {name!r}"
    if not re.fullmatch(r"[\w-]+", name) or name.isdigit():
        raise ProjectError(f"{where}: a parameter name is letters, digits, _ and - (not only digits)")
    if isinstance(spec, str):
        kind, default = spec, None
    elif isinstance(spec, dict):
        unknown = sorted(str(key) for key in spec if key not in _PARAMETER_KEYS)
        if unknown:
            raise ProjectError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: type, default")
        kind = spec.get("type", "string")
        default = spec.get("default")
    else:
        raise ProjectError(
            f"{where}: give a type name ({'/'.join(PARAMETER_TYPES)}) or a mapping with type and default"
        )
    if kind not in PARAMETER_TYPES:
        raise ProjectError(f"{where}: unknown type {kind!r}; cairn knows {', '.join(PARAMETER_TYPES)}")
    if default is not None and (isinstance(default, (dict, list)) or not isinstance(default, (str, int, float))):
        raise ProjectError(f"{where}: default must be a single value, got {type(default).__name__}")
    return Parameter(name, kind, None if default is None else str(default))


def _placeholders(where: str, command: str, parameters: dict[str, Parameter]) -> list[str]:
    """The parameter names a command template uses, refusing anything but ``{declared_name}``."""
    try:
        parts = list(string.Formatter().parse(command))
    except ValueError as exc:
        raise ProjectError(f"{where}: command is not a valid template ({exc}); write {{{{ and }}}} for braces") from exc
    used = []
    for _literal, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if spec or conversion or field_name not in parameters:
            shown = "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            declared = ", ".join(parameters) or "none"
            raise ProjectError(
                f"{where}: command uses {shown}, which is not a declared parameter (declared: {declared})"
            )
        used.append(field_name)
    return used


def parse_assignments(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``-P key=value`` options as a dict; a value may contain ``=``."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProjectError(f"-P {item!r}: give key=value")
        if key in result and result[key] != value:
            raise ProjectError(f"-P {key} given twice with different values")
        result[key] = value
    return result


def resolve(project: Project, entry_point: str, given: dict[str, str]) -> ResolvedCommand:
    """The command of ``entry_point`` with ``given`` values substituted (checked, shell-quoted).

    Declared parameters take the given value or their default; a missing one without default, a value
    of the wrong type and a path outside the project are refused. Extra keys are appended to the
    command as ``--key value``, as MLflow does.
    """
    entry = project.entry_points.get(entry_point) or _script_entry_point(project, entry_point)
    missing = [name for name, p in entry.parameters.items() if p.default is None and name not in given]
    if missing:
        raise ProjectError(
            f"entry point {entry.name!r}: no value for parameter(s) {', '.join(missing)} (give -P {missing[0]}=VALUE)"
        )
    params: dict[str, str] = {}
    substituted: dict[str, str] = {}
    for name, parameter in entry.parameters.items():
        value = given[name] if name in given else str(parameter.default)
        params[name] = value
        substituted[name] = shlex.quote(_checked_value(project, parameter, value))
    words = [
        "".join(
            literal + (substituted[field_name] if field_name is not None else "")
            for literal, field_name, _spec, _conversion in string.Formatter().parse(entry.command)
        )
    ]
    for key, value in given.items():
        if key not in entry.parameters:
            params[key] = value
            words.append(f"--{shlex.quote(key)} {shlex.quote(value)}")
    return ResolvedCommand(" ".join(words), params)


def _script_entry_point(project: Project, entry_point: str) -> EntryPoint:
    """MLflow's fallback: ``-e train.py`` runs ``python train.py``, ``-e run.sh`` runs ``bash run.sh``."""
    runner = {".py": "python", ".sh": "bash"}.get(Path(entry_point).suffix)
    if runner is None:
        known = ", ".join(project.entry_points) or "none"
        raise ProjectError(
            f"{project.file}: no entry point {entry_point!r} (entry points: {known}; a .py or .sh file "
            "inside the project also works)"
        )
    script = _inside(project, entry_point, f"entry point {entry_point!r}", must_exist=True)
    relative = script.relative_to(project.directory).as_posix()
    return EntryPoint(entry_point, f"{runner} {shlex.quote(relative).replace('{', '{{').replace('}', '}}')}")


def _checked_value(project: Project, parameter: Parameter, value: str) -> str:
    what = f"parameter {parameter.name!r} ({parameter.type})"
    if parameter.type == "float":
        try:
            float(value)
        except ValueError:
            raise ProjectError(f"{what}: {value!r} is not a number") from None
    elif parameter.type == "int":
        try:
            int(value)
        except ValueError:
            raise ProjectError(f"{what}: {value!r} is not an integer") from None
    elif parameter.type == "path":
        if _has_scheme(value):
            raise ProjectError(f"{what}: {value!r} is a URL; a path parameter takes a local path inside the project")
        return str(_inside(project, value, what, must_exist=True))
    elif parameter.type == "uri":
        if _has_scheme(value) and not value.lower().startswith("file:"):
            return value
        local = value[len("file:") :] if value.lower().startswith("file:") else value
        if local.startswith("//"):  # file:///abs or file://host/abs
            host, _, rest = local[2:].partition("/")
            if host not in ("", "localhost"):
                raise ProjectError(f"{what}: {value!r} names another host")
            local = "/" + rest
        _inside(project, local, what, must_exist=False)
    return value


def _has_scheme(value: str) -> bool:
    return len(urlparse(value).scheme) > 1  # a one-letter scheme would be a Windows drive


def _inside(project: Project, value: str, what: str, *, must_exist: bool) -> Path:
    """``value`` resolved against the project directory; refused unless it stays inside it."""
    if not value or "\x00" in value:
        raise ProjectError(f"{what}: empty or invalid path {value!r}")
    resolved = (project.directory / Path(value).expanduser()).resolve()
    if not resolved.is_relative_to(project.directory):
        raise ProjectError(f"{what}: {value!r} is outside the project directory {project.directory}")
    if must_exist and not resolved.exists():
        raise ProjectError(f"{what}: {value!r} does not exist in {project.directory}")
    return resolved
