"""LocalArtifactStore: symlink confinement, atomic writes, file:// roots, progress bars."""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from cairn.artifacts import FsspecArtifactStore, LocalArtifactStore, get_artifact_store
from cairn.artifacts.base import PROGRESS_MIN_BYTES, PROGRESS_MIN_FILES, should_show_progress
from cairn.artifacts.local import TEMP_PREFIX
from cairn.errors import InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("secret")
    return directory


@pytest.fixture
def trapped(tmp_path: Path, outside: Path) -> LocalArtifactStore:
    """A store whose root holds a regular file and two symlinks leading out of it."""
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "ok.txt").write_text("ok")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret.txt")
    return LocalArtifactStore(root)


def _assert_outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


def test_symlink_escape_read_is_refused(trapped: LocalArtifactStore) -> None:
    for path in ("filelink", "dirlink/secret.txt"):
        with pytest.raises(UnsafePath, match="outside the artifact root"):
            trapped.open(path)
        with pytest.raises(UnsafePath):
            trapped.exists(path)


def test_symlink_escape_list_into_is_refused_and_link_is_not_followed(trapped: LocalArtifactStore) -> None:
    with pytest.raises(UnsafePath, match="dirlink"):
        trapped.list("dirlink")
    # The links are visible (so they can be found and removed) but not followed: no size, not a dir.
    assert trapped.list() == [
        FileInfo("dirlink", False, None),
        FileInfo("filelink", False, None),
        FileInfo("ok.txt", False, 2),
    ]


def test_symlink_escape_write_through_is_refused(trapped: LocalArtifactStore, outside: Path, tmp_path: Path) -> None:
    source = tmp_path / "new.txt"
    source.write_text("new")
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "u.txt").write_text("u")
    for call in (
        lambda: trapped.put_bytes(b"x", "dirlink/new.txt"),
        lambda: trapped.put_bytes(b"x", "filelink"),
        lambda: trapped.put_file(source, "dirlink"),
        lambda: trapped.put_dir(upload, "dirlink"),
        lambda: trapped.put_dir(upload, "dirlink/deeper"),
    ):
        with pytest.raises(UnsafePath):
            call()
    _assert_outside_untouched(outside)


def test_symlink_escape_delete_through_is_refused(trapped: LocalArtifactStore, outside: Path) -> None:
    for path in ("dirlink/secret.txt", "dirlink", "filelink"):
        with pytest.raises(UnsafePath):
            trapped.delete(path)
    _assert_outside_untouched(outside)
    trapped.delete()  # removing the whole root removes the links, never what they point to
    assert not Path(trapped.root).exists()
    _assert_outside_untouched(outside)


def test_symlink_escape_download_is_refused(trapped: LocalArtifactStore, tmp_path: Path) -> None:
    for path in ("dirlink", "filelink", None):
        with pytest.raises(UnsafePath, match="link"):
            trapped.download(path, tmp_path / "dl")
    assert not (tmp_path / "dl" / "secret.txt").exists()


def test_inward_symlinks_work_and_delete_removes_the_link_only(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    store.put_bytes(b"data", "real/f.txt")
    (tmp_path / "root" / "alias").symlink_to(tmp_path / "root" / "real", target_is_directory=True)
    with store.open("alias/f.txt") as handle:
        assert handle.read() == b"data"
    store.delete("alias")
    assert not (tmp_path / "root" / "alias").exists()
    assert store.list("real") == [FileInfo("real/f.txt", False, 4)]


def test_root_that_is_itself_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real-root").mkdir()
    (tmp_path / "link-root").symlink_to(tmp_path / "real-root", target_is_directory=True)
    store = LocalArtifactStore(tmp_path / "link-root")
    store.put_bytes(b"x", "a/b.txt")
    assert (tmp_path / "real-root" / "a" / "b.txt").read_bytes() == b"x"
    assert store.list() == [FileInfo("a", True, None)]


def test_failed_write_keeps_old_content_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    store.put_bytes(b"old", "f.bin")
    source = tmp_path / "f.bin"
    source.write_bytes(b"new" * 1000)

    def broken_copy(src: io.BufferedReader, dst: io.BufferedWriter, length: int = 0) -> None:
        dst.write(src.read(10))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        store.put_file(source)
    assert (tmp_path / "root" / "f.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path / "root") == ["f.bin"]


def test_temp_files_are_hidden(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    store.put_bytes(b"x", "d/f.txt")
    (tmp_path / "root" / "d" / f"{TEMP_PREFIX}leftover").write_bytes(b"partial")
    assert store.list("d") == [FileInfo("d/f.txt", False, 1)]
    local = store.download("d", tmp_path / "dl")
    assert sorted(p.name for p in local.iterdir()) == ["f.txt"]


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = LocalArtifactStore(tmp_path / "root")
        store.put_bytes(b"x", "data.txt")
        script = tmp_path / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        store.put_file(script)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "root" / "data.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "root" / "run.sh").stat().st_mode) == 0o755


def test_write_conflicts_with_existing_entries(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    store.put_bytes(b"x", "file")
    store.put_bytes(b"y", "dir/inner.txt")
    with pytest.raises(InvalidArgument, match="in the way"):
        store.put_bytes(b"z", "file/child.txt")
    with pytest.raises(InvalidArgument, match="directory"):
        store.put_bytes(b"z", "dir")


def test_put_dir_refuses_broken_symlink_and_fifo(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "root")
    source = tmp_path / "src"
    source.mkdir()
    (source / "dangling").symlink_to(source / "nowhere")
    with pytest.raises(InvalidArgument, match="broken symlink"):
        store.put_dir(source)
    (source / "dangling").unlink()
    os.mkfifo(source / "pipe")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        store.put_dir(source)
    with pytest.raises(InvalidArgument, match="not a directory"):
        store.put_dir(tmp_path / "missing")
    assert store.list() == []


@pytest.mark.parametrize("as_uri", ["file://{}", "file://localhost{}", "file:{}"])
def test_file_uri_roots(tmp_path: Path, as_uri: str) -> None:
    store = get_artifact_store(as_uri.format(tmp_path / "with space"))
    assert isinstance(store, LocalArtifactStore)
    assert store.root == str(tmp_path / "with space")
    store.put_bytes(b"x", "a.txt")
    assert (tmp_path / "with space" / "a.txt").read_bytes() == b"x"


def test_percent_encoded_file_uri_and_relative_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_artifact_store(f"file://{tmp_path}/a%20b").root == str(tmp_path / "a b")
    monkeypatch.chdir(tmp_path)
    assert get_artifact_store("cairn-runs/artifacts").root == str(tmp_path / "cairn-runs" / "artifacts")
    with pytest.raises(InvalidArgument, match="host"):
        get_artifact_store("file://otherhost/x")


def test_get_artifact_store_dispatch() -> None:
    assert isinstance(get_artifact_store("memory://cairn-dispatch/x"), FsspecArtifactStore)
    with pytest.raises(InvalidArgument, match="storage options"):
        get_artifact_store("/tmp/x", anon=True)
    with pytest.raises(InvalidArgument, match="nope"):
        get_artifact_store("nope://bucket/x")


def test_progress_only_for_large_transfers_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not should_show_progress(PROGRESS_MIN_BYTES, PROGRESS_MIN_FILES, Tty())
    assert should_show_progress(PROGRESS_MIN_BYTES + 1, 1, Tty())
    assert should_show_progress(1, PROGRESS_MIN_FILES + 1, Tty())
    assert not should_show_progress(PROGRESS_MIN_BYTES + 1, PROGRESS_MIN_FILES + 1, io.StringIO())


def test_progress_bar_drawn_for_many_files_on_a_tty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    source = tmp_path / "many"
    source.mkdir()
    for i in range(PROGRESS_MIN_FILES + 1):
        (source / f"{i:03d}.txt").write_text(str(i))
    store = LocalArtifactStore(tmp_path / "root")
    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    store.put_dir(source)
    assert "Uploading 201 files" in fake.getvalue()
    assert len(store.list()) == PROGRESS_MIN_FILES + 1

    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    store.download(None, tmp_path / "dl")
    assert quiet.getvalue() == ""
    assert len(list((tmp_path / "dl").iterdir())) == PROGRESS_MIN_FILES + 1
