"""Artifact browsing through the UI: listings, previews of every kind, raw files with safe content
types, path confinement, and checkpoints with their resume commands."""

from __future__ import annotations

import pytest

from tests.ui._data import XSS_NAME
from tests.ui.conftest import UiEnv


def _url(ui_env: UiEnv, what: str) -> str:
    return f"/api/runs/{ui_env.data.baseline}/artifacts{what}"


def test_listing_root_and_a_directory(ui_env: UiEnv) -> None:
    root = ui_env.http.get(_url(ui_env, "")).json()
    names = {(e["name"], e["is_dir"]) for e in root["entries"]}
    assert {("notes.txt", False), ("model", True), ("checkpoints", True), ("images", True)} <= names
    model = ui_env.http.get(_url(ui_env, ""), params={"path": "model"}).json()
    assert [e["path"] for e in model["entries"]] == ["model/MLmodel", "model/input_example.json", "model/model.skops"]
    assert ui_env.http.get(_url(ui_env, ""), params={"path": "nothing-here"}).status_code == 404


def _preview(ui_env: UiEnv, path: str) -> dict:
    response = ui_env.http.get(_url(ui_env, "/preview"), params={"path": path})
    assert response.status_code == 200, response.text
    return response.json()


def test_text_json_yaml_image_and_binary_previews(ui_env: UiEnv) -> None:
    text = _preview(ui_env, "notes.txt")
    assert text["kind"] == "text" and text["text"] == "epoch 1 done\nepoch 2 done\n" and text["size"] == 26
    as_json = _preview(ui_env, "config.json")
    assert as_json["kind"] == "json" and '  "layers": [' in as_json["text"] and XSS_NAME in as_json["text"]
    as_yaml = _preview(ui_env, "config.yaml")
    assert as_yaml["kind"] == "yaml" and "layers:" in as_yaml["text"] and "error" not in as_yaml
    assert _preview(ui_env, "images/sample.png")["kind"] == "image"
    assert _preview(ui_env, "blob.bin")["kind"] == "binary"
    html = _preview(ui_env, "report.html")
    assert html["kind"] == "text" and html["content_type"] == "text/plain; charset=utf-8"


def test_mlmodel_preview_shows_signature_and_input_example(ui_env: UiEnv) -> None:
    body = _preview(ui_env, "model/MLmodel")
    assert body["kind"] == "mlmodel"
    model = body["model"]
    assert set(model["flavors"]) == {"python_function", "sklearn"}
    assert model["flavors"]["python_function"]["loader_module"] == "cairn.flavors.sklearn"
    assert [c["name"] for c in model["signature"]["inputs"]] == ["age", "plan"]
    assert model["signature"]["outputs"][0]["tensor-spec"]["dtype"] == "float64"
    assert model["signature"]["params"] is None
    example = model["input_example"]
    assert example["path"] == "model/input_example.json" and example["type"] == "dataframe"
    assert '"pro"' in example["text"] and example["truncated"] is False
    assert model["run_id"] == ui_env.data.baseline


def test_long_text_preview_is_truncated(ui_env: UiEnv) -> None:
    from cairn.ui.artifacts import PREVIEW_BYTES

    ui_env.client.log_text(ui_env.data.wider, "x" * (PREVIEW_BYTES + 10), "big.log")
    body = ui_env.http.get(f"/api/runs/{ui_env.data.wider}/artifacts/preview", params={"path": "big.log"}).json()
    assert body["truncated"] is True and len(body["text"]) == PREVIEW_BYTES and body["size"] == PREVIEW_BYTES + 10


@pytest.mark.parametrize(
    ("path", "content_type", "disposition"),
    [
        ("images/sample.png", "image/png", "inline"),
        ("report.html", "text/plain; charset=utf-8", "inline"),
        ("config.json", "application/json", "inline"),
        ("model/MLmodel", "text/plain; charset=utf-8", "inline"),
        ("blob.bin", "application/octet-stream", "attachment"),
    ],
)
def test_raw_files_have_safe_content_types_nosniff_and_a_sandbox(
    ui_env: UiEnv, path: str, content_type: str, disposition: str
) -> None:
    response = ui_env.http.get(_url(ui_env, "/raw"), params={"path": path})
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("sandbox;")
    assert response.headers["content-disposition"].startswith(disposition)
    stored = ui_env.client.artifact_store(ui_env.data.baseline)
    with stored.open(path) as handle:
        assert response.content == handle.read()


def test_raw_download_is_an_attachment_with_the_file_name(ui_env: UiEnv) -> None:
    response = ui_env.http.get(_url(ui_env, "/raw"), params={"path": "notes.txt", "download": "1"})
    assert response.headers["content-disposition"] == "attachment; filename*=UTF-8''notes.txt"


@pytest.mark.parametrize(
    "path",
    [
        "../../cairn.db",
        "../../../secret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "..%2fsecret.txt",
        "%252e%252e/secret.txt",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "model/..\\..\\secret.txt",
        "file:///etc/passwd",
    ],
)
@pytest.mark.parametrize("endpoint", ["", "/preview", "/raw"])
def test_paths_that_leave_the_artifact_root_are_refused(ui_env: UiEnv, path: str, endpoint: str) -> None:
    (ui_env.root / "secret.txt").write_text("top secret")
    response = ui_env.http.get(_url(ui_env, endpoint), params={"path": path})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "UnsafePath"
    assert "top secret" not in response.text


def test_a_symlink_out_of_the_artifact_root_is_not_followed(ui_env: UiEnv) -> None:
    (ui_env.root / "outside.txt").write_text("outside secret")
    artifact_dir = ui_env.client.artifact_store(ui_env.data.baseline).root
    import os

    link = os.path.join(artifact_dir, "escape.txt")
    os.symlink(ui_env.root / "outside.txt", link)
    try:
        for endpoint in ("/raw", "/preview"):
            response = ui_env.http.get(_url(ui_env, endpoint), params={"path": "escape.txt"})
            assert response.status_code in (400, 404), response.text
            assert "outside secret" not in response.text
    finally:
        os.unlink(link)


def test_directories_and_missing_files(ui_env: UiEnv) -> None:
    assert ui_env.http.get(_url(ui_env, "/raw"), params={"path": "model"}).status_code == 400
    assert ui_env.http.get(_url(ui_env, "/raw"), params={"path": ""}).status_code == 400
    assert ui_env.http.get(_url(ui_env, "/raw"), params={"path": "nope.txt"}).status_code == 404
    assert ui_env.http.get(_url(ui_env, "/preview"), params={"path": "nope.txt"}).status_code == 404
    assert ui_env.http.get(_url(ui_env, "/preview"), params={"path": "model"}).status_code == 400


def test_checkpoints_with_resume_commands(ui_env: UiEnv) -> None:
    rows = ui_env.http.get(f"/api/runs/{ui_env.data.baseline}/checkpoints").json()["checkpoints"]
    assert [(r["step"], r["valid"]) for r in rows] == [(250, False), (200, True), (100, True)]
    broken, latest, first = rows
    assert "no manifest.json" in broken["problem"] and broken["resume_command"] is None
    assert latest["epoch"] == 4 and latest["files"] == 2 and latest["metrics"] == {"loss": pytest.approx(1 / 200)}
    assert first["resume_command"] == (
        f'cairn.pytorch.resume(run_id="{ui_env.data.baseline}", step=100, model=..., optimizer=...)'
    )
    assert ui_env.http.get(f"/api/runs/{ui_env.data.wider}/checkpoints").json() == {"checkpoints": []}


def test_a_checkpoint_whose_file_was_truncated_is_flagged(ui_env: UiEnv) -> None:
    store = ui_env.client.artifact_store(ui_env.data.wider)
    ui_env.client.log_artifacts(
        ui_env.data.wider,
        ui_env.root / "scratch" / f"artifacts-{ui_env.data.baseline}" / "checkpoints" / "step-100",
        "checkpoints/step-100",
    )
    store.put_bytes(b"short", "checkpoints/step-100/model.safetensors")
    rows = ui_env.http.get(f"/api/runs/{ui_env.data.wider}/checkpoints").json()["checkpoints"]
    assert rows[0]["valid"] is False and "model.safetensors has 5 bytes" in rows[0]["problem"]
    store.delete("checkpoints")


def test_an_mlmodel_with_non_finite_numbers_still_previews_as_strict_json(ui_env: UiEnv) -> None:
    text = "flavors:\n  python_function:\n    loader_module: cairn.flavors.pyfunc\n    threshold: .nan\n    cap: .inf\n"
    ui_env.client.log_text(ui_env.data.wider, text, "odd/MLmodel")
    response = ui_env.http.get(f"/api/runs/{ui_env.data.wider}/artifacts/preview", params={"path": "odd/MLmodel"})
    assert response.status_code == 200 and "NaN," not in response.text
    flavor = response.json()["model"]["flavors"]["python_function"]
    assert flavor == {"loader_module": "cairn.flavors.pyfunc", "threshold": "NaN", "cap": "Infinity"}
