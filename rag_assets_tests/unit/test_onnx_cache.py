"""The model cache keeps one ONNX export per model: the earlier format's file goes once the new one is
written, unless a process of the earlier code is exporting it at that moment."""

from __future__ import annotations

from filelock import FileLock

from rag_assets.embedding import ONNX_OLD_EXPORT_FILE, _remove_old_export


def test_the_old_export_is_removed_and_its_lock_file_kept(tmp_path):
    old = tmp_path / ONNX_OLD_EXPORT_FILE
    old.write_bytes(b"an export of the earlier format")
    _remove_old_export(old)
    assert not old.exists() and (tmp_path / f"{ONNX_OLD_EXPORT_FILE}.lock").exists()
    _remove_old_export(old)  # nothing left to remove: no error


def test_an_old_export_being_written_under_its_lock_is_left(tmp_path):
    old = tmp_path / ONNX_OLD_EXPORT_FILE
    old.write_bytes(b"an export of the earlier format")
    with FileLock(f"{old}.lock"):  # a process of the earlier code, exporting (flock: held per open file)
        _remove_old_export(old)
    assert old.exists()
