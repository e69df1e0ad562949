"""``cairn models serve`` and ``cairn models predict``: MLflow's scoring protocol over a cairn model.

Both resolve the model URI once (``runs:/`` and ``models:/`` through the store of the ``cairn``
group's ``--store``; a remote artifact is downloaded), then load it through cairn's pyfunc path, so
models that need unpickling load only with ``--allow-pickle`` or ``CAIRN_ALLOW_PICKLE=1``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from cairn.errors import InvalidArgument
from cairn.server.binding import host_option, port_option

__all__ = ["predict", "serve"]

_PICKLE_HELP = (
    "Allow loading a model that needs unpickling or ships its own code (also CAIRN_ALLOW_PICKLE=1); "
    "only for models from a source you trust."
)


def _model_dir(ctx: click.Context, model_uri: str) -> Path:
    """The local directory of ``model_uri``, resolving registry URIs through the group's store."""
    from cairn.models.loading import local_path_of, resolve_local_model_dir
    from cairn.registry.uris import is_registry_uri

    if local_path_of(model_uri) is not None or not is_registry_uri(model_uri):
        return resolve_local_model_dir(model_uri)
    from cairn.artifacts import get_artifact_store
    from cairn.registry.client import RegistryClient
    from cairn.registry.uris import resolve_model_uri

    obj = ctx.obj or {}
    location = resolve_model_uri(model_uri, RegistryClient(obj.get("store"), obj.get("artifact_root"))).location
    local = local_path_of(location)
    if local is not None:
        return resolve_local_model_dir(local)
    target = Path(tempfile.mkdtemp(prefix="cairn-serve-"))
    return get_artifact_store(location).download(None, target).absolute()


def _load(ctx: click.Context, model_uri: str, allow_pickle: bool) -> tuple[Path, Any]:
    from cairn.models.loading import load_pyfunc

    directory = _model_dir(ctx, model_uri)
    return directory, load_pyfunc(directory, allow_pickle=allow_pickle)


@click.command("serve")
@click.option(
    "--model-uri", "-m", required=True, help="Model to serve: a path, runs:/..., models:/name/1, models:/name@alias."
)
@host_option()
@port_option()
@click.option(
    "--workers",
    "-w",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes, each with its own copy of the model.",
)
@click.option(
    "--timeout",
    "-t",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a prediction may take before the request gets a 504 (0: no limit). Requests under 16 KB "
    "predict on the event loop and are not cut off.",
)
@click.option(
    "--max-body-size",
    default=100 * 1024 * 1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest request body in bytes; bigger ones get a 413.",
)
@click.option("--allow-pickle", is_flag=True, help=_PICKLE_HELP)
@click.pass_context
def serve(
    ctx: click.Context,
    model_uri: str,
    host: str,
    port: int,
    workers: int,
    timeout: float,
    max_body_size: int,
    allow_pickle: bool,
) -> None:
    """Serve a model over MLflow's scoring protocol (POST /invocations; GET /ping, /health, /version).

    Requests are JSON with one of dataframe_split, dataframe_records, instances or inputs (and optional
    params), text/csv, or Parquet; answers are {"predictions": ...}. The model's signature is enforced:
    a request that does not fit gets a 400 naming the column, dtype or shape. There is no
    authentication: anyone who can reach the port can call the model.
    """
    from cairn.server.binding import is_loopback
    from cairn.serving import app as scoring

    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise click.ClickException(f"cairn models serve needs uvicorn: pip install 'cairn[ui]' ({exc})") from exc
    if not is_loopback(host):
        click.secho(
            f"warning: binding to {host} with no authentication (a scoring server has none): anyone reaching this "
            "port can call the model",
            fg="yellow",
            err=True,
        )
    directory, model = _load(ctx, model_uri, allow_pickle)  # fails here, before binding, if it cannot load
    if port == 0:  # pick the port here, so the message below can name it
        import socket

        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"cairn models serve: {model_uri} at http://{shown}:{port}/invocations "
        f"({workers} worker{'s' if workers > 1 else ''}; Ctrl-C to stop)",
        err=True,
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": 5,
    }
    if workers == 1:
        app = scoring.ScoringApp(model, max_body_size=max_body_size, timeout=timeout or None)
        uvicorn.run(app, **options)
        return
    del model  # each worker loads its own copy
    os.environ[scoring.ENV_MODEL_DIR] = str(directory)
    os.environ[scoring.ENV_ALLOW_PICKLE] = "1" if allow_pickle else "0"
    os.environ[scoring.ENV_TIMEOUT] = str(timeout)
    os.environ[scoring.ENV_MAX_BODY_SIZE] = str(max_body_size)
    uvicorn.run("cairn.serving.app:create_app_from_env", factory=True, workers=workers, **options)


_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def _format_of(path: str, given: str | None, what: str) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise InvalidArgument(
            f"cannot tell the {what} format of {path!r} from its extension: use .csv, .json or .parquet"
            + (" or pass --content-type" if what == "input" else "")
        )
    return _FORMATS[suffix]


def _read_input(path: str, content_type: str, schema: Any) -> Any:
    from cairn.serving import protocol

    if path == "-":
        if content_type == "parquet":
            return protocol.parse_parquet(sys.stdin.buffer.read(), schema)
        body: bytes = sys.stdin.buffer.read()
    else:
        source = Path(path)
        if not source.is_file():
            raise InvalidArgument(f"no input file {path}")
        if content_type == "parquet":
            return protocol.parse_parquet(source.read_bytes(), schema)
        body = source.read_bytes()
    if content_type == "csv":
        return protocol.parse_csv(body, schema)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise protocol.BadRequest(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise protocol.BadRequest(f"{path} nests JSON arrays or objects too deeply to read") from None
    if isinstance(payload, list):  # a plain list of records
        payload = {"dataframe_records": payload}
    return protocol.parse_json_payload(payload, schema)


def _frame_of(predictions: Any) -> Any:
    """Predictions as a DataFrame for CSV/Parquet output."""
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return predictions
    if isinstance(predictions, pd.Series):
        return predictions.to_frame(name=predictions.name if predictions.name is not None else "predictions")
    if isinstance(predictions, dict):
        columns: dict[str, Any] = {}
        for key, value in predictions.items():
            array = np.asarray(value)
            if array.ndim == 2:
                columns.update({f"{key}_{i}": array[:, i] for i in range(array.shape[1])})
            else:
                columns[str(key)] = list(array) if array.ndim > 2 else array
        return pd.DataFrame(columns)
    array = np.asarray(predictions)
    if array.ndim == 1:
        return pd.DataFrame({"predictions": array})
    if array.ndim == 2:
        return pd.DataFrame(array, columns=[str(i) for i in range(array.shape[1])])
    raise InvalidArgument(
        f"the predictions have shape {array.shape}; CSV and Parquet hold at most 2 dimensions, write JSON instead"
    )


@click.command("predict")
@click.option("--model-uri", "-m", required=True, help="Model: a path, runs:/..., models:/name/1, models:/name@alias.")
@click.option("--input-path", "-i", required=True, help="Input file (CSV, JSON or Parquet), or - for stdin.")
@click.option(
    "--output-path",
    "-o",
    default="-",
    show_default=True,
    help='Output file: .json ({"predictions": ...}), .csv or .parquet; - for JSON on stdout.',
)
@click.option(
    "--content-type",
    "-t",
    type=click.Choice(["json", "csv", "parquet"]),
    default=None,
    help="Input format (default: from the input file's extension). JSON takes the /invocations request shapes "
    "or a plain list of records.",
)
@click.option("--allow-pickle", is_flag=True, help=_PICKLE_HELP)
@click.pass_context
def predict(
    ctx: click.Context, model_uri: str, input_path: str, output_path: str, content_type: str | None, allow_pickle: bool
) -> None:
    """Score a file with a model (batch): the same input shapes and answers as `cairn models serve`."""
    from cairn.serving import protocol

    if input_path == "-" and content_type is None:
        raise InvalidArgument("reading stdin (-i -) needs --content-type json, csv or parquet")
    in_format = _format_of(input_path, content_type, "input")
    out_format = "json" if output_path == "-" else _format_of(output_path, None, "output")
    if "parquet" in (in_format, out_format):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidArgument("Parquet input or output needs pyarrow: pip install pyarrow") from None
    _, model = _load(ctx, model_uri, allow_pickle)
    parsed = _read_input(input_path, in_format, model.metadata.get_input_schema())
    predictions = model.predict(parsed.data, params=parsed.params)
    if out_format == "json":
        payload = protocol.predictions_payload(predictions)
        if output_path == "-":
            sys.stdout.buffer.write(payload + b"\n")
            sys.stdout.flush()
        else:
            Path(output_path).write_bytes(payload)
    elif out_format == "csv":
        _frame_of(predictions).to_csv(output_path, index=False)
    else:
        _frame_of(predictions).to_parquet(output_path, index=False)
    if output_path != "-":
        click.echo(f"wrote {_count(predictions)} predictions to {output_path}", err=True)


def _count(predictions: Any) -> int:
    if isinstance(predictions, dict):
        predictions = next(iter(predictions.values()), [])
    try:
        return len(predictions)
    except TypeError:
        return 1
