"""The record of verified model files: a large file is hashed once, and never trusted once it changes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import cairn
from cairn.errors import ModelIntegrityError
from cairn.models import hashes, verified_files
from cairn.models.loading import verify_model_files
from cairn.models.packaging import log_model, save_model_dir

BIG = verified_files.MIN_CACHED_SIZE * 4


def _write_big(directory: Path) -> None:
    (directory / "weights.bin").write_bytes(os.urandom(BIG))
    (directory / "small.txt").write_text("tiny")


def _save(path: Path, **kwargs: object) -> object:
    return save_model_dir(
        path,
        flavor_name="python_function",
        flavor_conf={},
        loader_module="cairn.pyfunc",
        write_data=_write_big,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files :func:`hashes.file_sha256` reads from now on."""
    seen: list[str] = []
    original = hashes.file_sha256

    def counting(path: str | os.PathLike[str]) -> str:
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(hashes, "file_sha256", counting)
    return seen


def test_a_saved_model_loads_without_hashing_its_large_files(tmp_path: Path, hashed: list[str]) -> None:
    _save(tmp_path / "m")
    hashed.clear()
    verify_model_files(tmp_path / "m")
    assert "small.txt" in hashed and "weights.bin" not in hashed
    entries = list((tmp_path / ".cairn-cache" / "verified-files").iterdir())
    assert len(entries) == 1 and entries[0].read_text() == hashes.file_sha256(tmp_path / "m" / "weights.bin")


def test_a_logged_model_is_recorded_where_the_store_keeps_it(tmp_path: Path, hashed: list[str]) -> None:
    with cairn.start_run():
        info = log_model(_save, "model")
    from cairn.models.loading import resolve_local_model_dir

    local = resolve_local_model_dir(info.model_uri)
    hashed.clear()
    verify_model_files(local)
    assert "small.txt" in hashed and "weights.bin" not in hashed


def test_a_file_hashed_at_load_is_not_hashed_again(tmp_path: Path, hashed: list[str]) -> None:
    _save(tmp_path / "m")
    verified_files.forget_all()
    for entry in (tmp_path / ".cairn-cache" / "verified-files").iterdir():
        entry.unlink()
    hashed.clear()
    verify_model_files(tmp_path / "m")
    verify_model_files(tmp_path / "m")
    assert hashed.count("weights.bin") == 1 and hashed.count("small.txt") == 2


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_a_file_altered_in_place_after_it_was_recorded_is_refused(
    tmp_path: Path, hashed: list[str], restore_mtime: bool
) -> None:
    _save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.bin"
    before = weights.stat()
    with open(weights, "r+b") as stream:  # same inode, same size, one byte differs
        stream.seek(100)
        byte = stream.read(1)
        stream.seek(100)
        stream.write(bytes([byte[0] ^ 0xFF]))
    if restore_mtime:  # an attacker can set mtime back, but not ctime
        os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ModelIntegrityError, match=r"'weights\.bin'.*modified or corrupted"):
        verify_model_files(tmp_path / "m")


def test_a_replaced_file_is_hashed_again(tmp_path: Path, hashed: list[str]) -> None:
    _save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.bin"
    copy = tmp_path / "copy.bin"
    copy.write_bytes(weights.read_bytes())
    os.replace(copy, weights)  # same content, new inode
    verify_model_files(tmp_path / "m")
    assert "weights.bin" in hashed


def test_a_file_changed_just_before_hashing_is_not_recorded(tmp_path: Path) -> None:
    _save(tmp_path / "m")
    for entry in (tmp_path / ".cairn-cache" / "verified-files").iterdir():
        entry.unlink()
    verified_files.forget_all()
    weights = tmp_path / "m" / "weights.bin"
    os.utime(weights)  # its ctime is now: a write in the same clock tick could go unseen
    identity = verified_files.file_identity(weights)
    verified_files.record_verified(identity, "0" * 64, known_at=time.time())
    assert not verified_files.is_verified(weights, "0" * 64)
    assert not list((tmp_path / ".cairn-cache" / "verified-files").iterdir())


def test_the_record_can_be_turned_off(tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_VERIFY_CACHE", "0")
    _save(tmp_path / "m")
    hashed.clear()
    verify_model_files(tmp_path / "m")
    verify_model_files(tmp_path / "m")
    assert hashed.count("weights.bin") == 2


def test_a_cache_directory_others_can_write_is_not_trusted(tmp_path: Path, hashed: list[str]) -> None:
    entries = tmp_path / ".cairn-cache" / "verified-files"
    _save(tmp_path / "m")
    assert list(entries.iterdir())
    entries.chmod(0o777)
    verified_files.forget_all()
    verify_model_files(tmp_path / "m")
    assert "weights.bin" in hashed
