"""A small but complete store for the UI tests: runs with params, metrics and every artifact kind,
checkpoints, a RUNNING run, hostile names, and registered model versions with stages and aliases."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cairn.checkpoint.manifest import write_manifest
from cairn.tracking.client import Client
from cairn.tracking.entities import Metric

XSS_NAME = "<script>alert(1)</script>"
XSS_PARAM = '<img src=x onerror="alert(2)">'
T0 = (time.time_ns() // 1_000_000 // 60_000 - 90) * 60_000
"""Start of the first run: 90 minutes ago, on a whole minute (screenshots show recent runs)."""

SIGNATURE_INPUTS = json.dumps(
    [
        {"type": "double", "name": "age", "required": True},
        {"type": "string", "name": "plan", "required": True},
    ]
)
SIGNATURE_OUTPUTS = json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}])


@dataclass
class Populated:
    experiment_id: str
    empty_experiment_id: str
    baseline: str
    wider: str
    hostile: str
    live: str
    run_ids: list[str] = field(default_factory=list)


def _png_bytes() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (48, 32), (30, 120, 200))
    for x in range(48):
        image.putpixel((x, x % 32), (250, 250, 250))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _log_curve(client: Client, run_id: str, key: str, values: list[float], *, start: int) -> None:
    metrics = [Metric(key, v, start + i * 1000, i) for i, v in enumerate(values)]
    client.log_batch(run_id, metrics=metrics)


def _model_dir(root: Path, run_id: str) -> Path:
    model = root / "model"
    model.mkdir(parents=True)
    mlmodel = {
        "artifact_path": "model",
        "flavors": {
            "python_function": {"loader_module": "cairn.flavors.sklearn", "python_version": "3.11.9", "env": {}},
            "sklearn": {"sklearn_version": "1.5.0", "serialization_format": "skops"},
        },
        "run_id": run_id,
        "model_uuid": "0123456789abcdef0123456789abcdef",
        "utc_time_created": "2024-05-01 12:00:00.000000",
        "signature": {"inputs": SIGNATURE_INPUTS, "outputs": SIGNATURE_OUTPUTS, "params": None},
        "saved_input_example_info": {
            "artifact_path": "input_example.json",
            "type": "dataframe",
            "pandas_orient": "split",
        },
        "metadata": {"cairn_format": 1},
    }
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=True), encoding="utf-8")
    (model / "input_example.json").write_text(
        json.dumps({"columns": ["age", "plan"], "data": [[42.0, "pro"], [31.5, "free"]]}), encoding="utf-8"
    )
    (model / "model.skops").write_bytes(b"PK\x03\x04 not really a zip\x00\x01")
    return model


def _checkpoint(root: Path, step: int, run_id: str, *, valid: bool) -> Path:
    directory = root / f"step-{step}"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(64)))
    (directory / "state.json").write_text(json.dumps({"step": step, "epoch": step // 50}), encoding="utf-8")
    if valid:
        write_manifest(directory, step=step, epoch=step // 50, run_id=run_id, metrics={"loss": 1.0 / step}, fsync=False)
    return directory


def populate(client: Client, tmp: Path) -> Populated:
    """Fill the client's store (see the module doc); ``tmp`` is scratch space for artifact files."""
    experiment_id = client.create_experiment("vision")
    empty_id = client.create_experiment("empty experiment")
    runs: dict[str, str] = {}
    specs = [
        ("baseline", {"lr": "0.01", "batch_size": "32", "optimizer": "adam"}, 1.0, 0),
        ("wider", {"lr": "0.1", "batch_size": "64", "optimizer": "sgd"}, 0.8, 60_000),
        (XSS_NAME, {"lr": "0.001", "batch_size": "32", "optimizer": XSS_PARAM}, 1.2, 120_000),
    ]
    for name, params, scale, offset in specs:
        run = client.create_run(experiment_id, run_name=name, start_time=T0 + offset)
        run_id = run.info.run_id
        runs[name] = run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        _log_curve(client, run_id, "loss", [scale / (1 + 0.05 * i) for i in range(200)], start=T0 + offset)
        _log_curve(
            client, run_id, "accuracy", [1 - 0.5 * scale / (1 + 0.03 * i) for i in range(200)], start=T0 + offset
        )
        client.set_tag(run_id, "team", "perception")
        client.set_terminated(run_id, "FINISHED", end_time=T0 + offset + 200_000)

    baseline = runs["baseline"]
    client.log_text(baseline, "epoch 1 done\nepoch 2 done\n", "notes.txt")
    client.log_dict(baseline, {"lr": 0.01, "layers": [64, 32], "name": XSS_NAME}, "config.json")
    client.log_dict(baseline, {"lr": 0.01, "layers": [64, 32]}, "config.yaml")
    client.log_text(baseline, f"<html><body>{XSS_NAME}</body></html>", "report.html")
    client.artifact_store(baseline).put_bytes(_png_bytes(), "images/sample.png")
    client.artifact_store(baseline).put_bytes(b"\x00\x01\x02binary", "blob.bin")
    scratch = tmp / f"artifacts-{baseline}"
    client.log_artifacts(baseline, _model_dir(scratch, baseline), "model")
    for step, valid in ((100, True), (200, True), (250, False)):
        directory = _checkpoint(scratch / "checkpoints", step, baseline, valid=valid)
        client.log_artifacts(baseline, directory, f"checkpoints/step-{step}")
    client.log_artifacts(runs["wider"], _model_dir(tmp / f"artifacts-{runs['wider']}", runs["wider"]), "model")

    live = client.create_run(experiment_id, run_name="live-run", start_time=T0 + 180_000).info.run_id
    client.log_param(live, "lr", "0.05")
    _log_curve(client, live, "loss", [0.9 / (1 + 0.1 * i) for i in range(20)], start=T0 + 180_000)

    client.create_model_version("classifier", f"runs:/{baseline}/model", run_id=baseline, description="first cut")
    client.create_model_version("classifier", f"runs:/{runs['wider']}/model", run_id=runs["wider"])
    client.transition_model_version_stage("classifier", 1, "Production")
    client.set_registered_model_alias("classifier", "champion", 1)
    client.set_registered_model_alias("classifier", "challenger", 2)
    return Populated(
        experiment_id=experiment_id,
        empty_experiment_id=empty_id,
        baseline=baseline,
        wider=runs["wider"],
        hostile=runs[XSS_NAME],
        live=live,
        run_ids=[baseline, runs["wider"], runs[XSS_NAME], live],
    )
