"""The Volume fake against the races of a real container: other threads write under a mount while it
commits or reloads. A fake that loses such a file fails the scale-out tests by chance, under load (a result
renamed into place during the sync round's commit never reached the other containers)."""

from __future__ import annotations

import shutil

import modal_fakes
from modal_fakes import FakeVolume


def _writing_during_the_first_copy(monkeypatch, write):
    """Make ``write()`` happen while the mount copies its first file (another thread's write, mid-commit)."""
    real_copy = shutil.copy2
    done = []

    def copy(source, target):
        if not done:
            done.append(True)
            write()
        return real_copy(source, target)

    monkeypatch.setattr(modal_fakes.shutil, "copy2", copy)


def test_a_file_that_appears_during_a_commit_goes_with_the_next_one(tmp_path, monkeypatch):
    volume = FakeVolume(tmp_path / "cloud")
    a, b = volume.mount(tmp_path / "a"), volume.mount(tmp_path / "b")
    (tmp_path / "a" / "upload.bin").write_bytes(b"upload")
    result = tmp_path / "a" / "results" / "job.zip"

    def rename_a_result_into_place():
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_bytes(b"stems")

    _writing_during_the_first_copy(monkeypatch, rename_a_result_into_place)
    a.commit()  # the sync round's commit, while the result lands
    monkeypatch.undo()
    a.commit()  # the commit made before the job is announced done

    assert b"".join(b.read_file("results/job.zip")) == b"stems"
    b.reload()
    assert (tmp_path / "b" / "results" / "job.zip").read_bytes() == b"stems"


def test_a_file_written_during_a_reload_is_kept_and_committed(tmp_path, monkeypatch):
    volume = FakeVolume(tmp_path / "cloud")
    a, b = volume.mount(tmp_path / "a"), volume.mount(tmp_path / "b")
    (tmp_path / "a" / "theirs.bin").write_bytes(b"theirs")
    a.commit()
    upload = tmp_path / "b" / "uploads" / "mine.bin"

    def an_upload_streams_in():
        upload.parent.mkdir(parents=True, exist_ok=True)
        upload.write_bytes(b"mine")

    _writing_during_the_first_copy(monkeypatch, an_upload_streams_in)
    b.reload()  # pulls "theirs.bin" while the upload lands
    monkeypatch.undo()

    assert upload.read_bytes() == b"mine"  # not taken for a file another container deleted
    assert (tmp_path / "b" / "theirs.bin").read_bytes() == b"theirs"
    b.commit()
    assert b"".join(a.read_file("uploads/mine.bin")) == b"mine"


def test_a_file_deleted_by_one_container_goes_from_the_others_on_reload(tmp_path):
    volume = FakeVolume(tmp_path / "cloud")
    a, b = volume.mount(tmp_path / "a"), volume.mount(tmp_path / "b")
    (tmp_path / "a" / "old.zip").write_bytes(b"old")
    a.commit()
    b.reload()
    assert (tmp_path / "b" / "old.zip").is_file()
    (tmp_path / "a" / "old.zip").unlink()  # the sweeper, on A
    a.commit()
    b.reload()
    assert not (tmp_path / "b" / "old.zip").exists()
