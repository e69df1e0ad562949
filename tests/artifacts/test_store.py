"""The ArtifactStore contract, run against the local filesystem and S3 (moto server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn.artifacts import ArtifactStore
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo

from .test_paths import ESCAPING_PATHS


def _read(store: ArtifactStore, path: str) -> bytes:
    with store.open(path) as handle:
        return handle.read()


def test_put_file_and_open_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    store.put_file(source)
    store.put_file(source, "nested/dir")
    assert _read(store, "weights.bin") == b"\x00\x01" * 1000
    assert _read(store, "nested/dir/weights.bin") == b"\x00\x01" * 1000
    assert store.exists("nested/dir/weights.bin")
    assert store.exists("nested")
    assert not store.exists("nested/other")


def test_put_file_replaces_existing_file(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("first")
    store.put_file(source)
    source.write_text("second, longer")
    store.put_file(source)
    assert _read(store, "a.txt") == b"second, longer"
    assert store.list() == [FileInfo("a.txt", False, len("second, longer"))]


def test_put_file_refuses_a_directory_or_missing_file(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not an existing file"):
        store.put_file(tmp_path)
    with pytest.raises(InvalidArgument, match=r"missing\.txt"):
        store.put_file(tmp_path / "missing.txt")


def test_put_bytes(store: ArtifactStore) -> None:
    store.put_bytes(b'{"a": 1}', "config/params.json")
    store.put_bytes(b"", "empty.txt")
    assert _read(store, "config/params.json") == b'{"a": 1}'
    assert _read(store, "empty.txt") == b""
    assert store.list("config") == [FileInfo("config/params.json", False, 8)]
    with pytest.raises(InvalidArgument, match="file name"):
        store.put_bytes(b"x", "")


def test_put_dir_and_nested_listing(store: ArtifactStore, src_tree: Path) -> None:
    store.put_dir(src_tree, "model")
    assert store.list() == [FileInfo("model", True, None)]
    assert store.list("model") == [FileInfo("model/sub", True, None), FileInfo("model/top.txt", False, 3)]
    assert store.list("model/sub/") == [
        FileInfo("model/sub/a.bin", False, 256),
        FileInfo("model/sub/deeper", True, None),
    ]
    assert store.list("model/sub/deeper") == [FileInfo("model/sub/deeper/b.json", False, 8)]
    assert _read(store, "model/sub/a.bin") == bytes(range(256))


def test_put_dir_at_root(store: ArtifactStore, src_tree: Path) -> None:
    store.put_dir(src_tree)
    assert [info.path for info in store.list()] == ["sub", "top.txt"]


def test_list_of_a_file_is_empty_and_of_an_empty_root_is_empty(store: ArtifactStore) -> None:
    assert store.list() == []
    assert not store.exists()
    store.put_bytes(b"x", "f.txt")
    assert store.list("f.txt") == []
    assert store.exists()


def test_download_file_keeps_relative_path(store: ArtifactStore, src_tree: Path, tmp_path: Path) -> None:
    store.put_dir(src_tree, "model")
    local = store.download("model/sub/a.bin", tmp_path / "dl")
    assert local == tmp_path / "dl" / "model" / "sub" / "a.bin"
    assert local.read_bytes() == bytes(range(256))


def test_download_directory(store: ArtifactStore, src_tree: Path, tmp_path: Path) -> None:
    store.put_dir(src_tree, "model")
    store.put_bytes(b"elsewhere", "other.txt")
    local = store.download("model", tmp_path / "dl")
    assert local == tmp_path / "dl" / "model"
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == {"top.txt": b"top", "sub/a.bin": bytes(range(256)), "sub/deeper/b.json": b'{"b": 1}'}


def test_download_root(store: ArtifactStore, src_tree: Path, tmp_path: Path) -> None:
    assert store.download(None, tmp_path / "empty") == tmp_path / "empty"
    assert list((tmp_path / "empty").iterdir()) == []
    store.put_dir(src_tree)
    local = store.download(None, tmp_path / "dl")
    assert local == tmp_path / "dl"
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "sub/a.bin",
        "sub/deeper/b.json",
        "top.txt",
    ]


def test_delete_subdirectory_keeps_siblings_with_same_prefix(store: ArtifactStore) -> None:
    store.put_bytes(b"1", "sub/a.txt")
    store.put_bytes(b"2", "sub/inner/b.txt")
    store.put_bytes(b"3", "sub2/c.txt")
    store.put_bytes(b"4", "subway.txt")
    store.delete("sub")
    assert not store.exists("sub")
    assert [info.path for info in store.list()] == ["sub2", "subway.txt"]
    assert _read(store, "sub2/c.txt") == b"3"


def test_delete_file_and_everything(store: ArtifactStore) -> None:
    store.put_bytes(b"1", "a.txt")
    store.put_bytes(b"2", "d/b.txt")
    store.delete("a.txt")
    assert [info.path for info in store.list()] == ["d"]
    store.delete()
    assert store.list() == []
    assert not store.exists("d/b.txt")
    store.delete()  # deleting an empty root is not an error
    store.put_bytes(b"again", "a.txt")  # and the store is usable afterwards
    assert _read(store, "a.txt") == b"again"


def test_missing_paths_raise_artifact_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes(b"x", "present.txt")
    for call in (
        lambda: store.open("missing.txt"),
        lambda: store.list("missing"),
        lambda: store.download("missing", tmp_path / "dl"),
        lambda: store.delete("missing/file.txt"),
    ):
        with pytest.raises(ArtifactNotFound, match="missing"):
            call()
    with pytest.raises(FileNotFoundError):  # ArtifactNotFound is also a builtin FileNotFoundError
        store.open("missing.txt")


def test_open_directory_is_refused(store: ArtifactStore) -> None:
    store.put_bytes(b"x", "d/f.txt")
    with pytest.raises(InvalidArgument, match="directory"):
        store.open("d")


def test_uri_for(store: ArtifactStore) -> None:
    assert store.uri_for() == store.root
    assert store.uri_for("a//b/") == f"{store.root}/a/b"
    with pytest.raises(UnsafePath):
        store.uri_for("../x")


@pytest.mark.parametrize("bad", ESCAPING_PATHS)
def test_every_method_refuses_escaping_paths(store: ArtifactStore, tmp_path: Path, bad: str) -> None:
    source = tmp_path / "f.txt"
    source.write_text("x")
    calls = {
        "put_file": lambda: store.put_file(source, bad),
        "put_dir": lambda: store.put_dir(tmp_path, bad),
        "put_bytes": lambda: store.put_bytes(b"x", bad),
        "open": lambda: store.open(bad),
        "list": lambda: store.list(bad),
        "download": lambda: store.download(bad, tmp_path / "dl"),
        "delete": lambda: store.delete(bad),
        "exists": lambda: store.exists(bad),
        "uri_for": lambda: store.uri_for(bad),
    }
    for name, call in calls.items():
        with pytest.raises(UnsafePath):
            call()
            pytest.fail(f"{name}({bad!r}) was not refused")
    assert store.list() == [], "nothing was written"
    assert not (tmp_path / "dl").exists()


def test_put_dir_refuses_outward_symlink_and_uploads_nothing(
    store: ArtifactStore, src_tree: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    (src_tree / "sub" / "link.txt").symlink_to(secret)
    with pytest.raises(UnsafePath, match=r"link\.txt.*outside"):
        store.put_dir(src_tree, "model")
    assert store.list() == []


def test_put_dir_refuses_outward_directory_symlink(store: ArtifactStore, src_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("x")
    (src_tree / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath, match="escape"):
        store.put_dir(src_tree)
    assert store.list() == []


def test_put_dir_follows_inward_symlinks(store: ArtifactStore, src_tree: Path) -> None:
    (src_tree / "alias.txt").symlink_to(src_tree / "top.txt")
    (src_tree / "sub-alias").symlink_to(src_tree / "sub" / "deeper", target_is_directory=True)
    store.put_dir(src_tree)
    assert _read(store, "alias.txt") == b"top"
    assert _read(store, "sub-alias/b.json") == b'{"b": 1}'


def test_put_dir_refuses_symlink_cycle(store: ArtifactStore, src_tree: Path) -> None:
    (src_tree / "sub" / "loop").symlink_to(src_tree, target_is_directory=True)
    with pytest.raises(UnsafePath, match="cycle"):
        store.put_dir(src_tree)
    assert store.list() == []


def test_put_dir_refuses_unsafe_file_names(store: ArtifactStore, src_tree: Path) -> None:
    (src_tree / "sub" / "back\\slash.txt").write_text("x")
    with pytest.raises(UnsafePath, match="backslash"):
        store.put_dir(src_tree)
    assert store.list() == []
