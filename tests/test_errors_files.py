"""The rules every layer shares: failure codes and their HTTP statuses, one-line reasons, atomic writes."""

from __future__ import annotations

import errno

import pytest

from freestems.errors import FAILURE_HTTP, FailureCode, http_failure, one_line
from freestems.files import TEMP_GLOB, atomic_path, temp_path

# ---------------------------------------------------------------------------------------------- codes


def test_every_failure_code_has_its_status_and_keeps_its_wire_value():
    assert set(FAILURE_HTTP) == set(FailureCode)
    assert {code.value: http_failure(code).status for code in FailureCode} == {
        "too_long": 413,
        "not_audio": 415,
        "encode_failed": 500,
        "invalid_options": 422,
        "disk_full": 503,
        "interrupted": 503,
        "cancelled": 409,
        "restarting": 503,
        "internal": 500,
    }
    assert http_failure("disk_full").retry_after == 60.0 and http_failure("too_long").retry_after is None
    assert http_failure("failed").status == 500 and http_failure(None).status == 500  # unknown: a 500


# ---------------------------------------------------------------------------------------------- reasons


def test_one_line_prefers_the_systems_words_and_folds_the_rest():
    assert one_line(OSError(errno.ENOSPC, "No space left on device", "/data/x")) == "No space left on device"
    assert one_line(RuntimeError("Error(s) in loading:\n\tMissing key(s): a, b\n")) == (
        "Error(s) in loading: Missing key(s): a, b"
    )
    assert one_line(ValueError()) == "ValueError"
    assert one_line("  [Errno 111]\nConnection refused ") == "[Errno 111] Connection refused"
    long = one_line(RuntimeError("x" * 500))
    assert len(long) == 200 and long.endswith("...")
    assert len(one_line(RuntimeError("y" * 500), limit=50)) == 50


# ---------------------------------------------------------------------------------------------- files


def test_atomic_path_renames_a_complete_file_into_place(tmp_path):
    dest = tmp_path / "stems.zip"
    dest.write_bytes(b"old")
    with atomic_path(dest) as temp:
        assert temp.parent == tmp_path and temp.match(".stems.zip.*.part") and not temp.exists()
        temp.write_bytes(b"new")
        assert dest.read_bytes() == b"old"  # nothing changes until the block ends
    assert dest.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["stems.zip"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError, ValueError])
def test_atomic_path_removes_its_temp_file_on_any_failure(tmp_path, interruption):
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(b"old")
    with pytest.raises(interruption), atomic_path(dest) as temp:
        temp.write_bytes(b"half")
        raise interruption("stop")
    assert dest.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_temp_names_are_unique_and_found_by_the_start_up_cleanup(tmp_path):
    names = {temp_path(tmp_path / "upload") for _ in range(100)}
    assert len(names) == 100
    for name in names:
        name.write_bytes(b"left by a crash")
    assert set(tmp_path.glob(TEMP_GLOB)) == names
