"""Asset directories: what a scan finds, and that nothing outside the directory is ever listed or read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuroam.worker.discovery import OutsideDirectory, checked, scan


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_scan_finds_files_by_suffix_recursively_in_a_stable_order(tmp_path: Path) -> None:
    touch(tmp_path / "b.safetensors")
    touch(tmp_path / "sub" / "a.PT")
    touch(tmp_path / "notes.txt")
    found = scan(tmp_path, (".safetensors", ".pt"))
    assert [f.relative for f in found] == ["b.safetensors", "sub/a.PT"]
    assert [f.stem for f in found] == ["b", "a"]


def test_a_missing_or_unset_directory_holds_nothing(tmp_path: Path) -> None:
    assert scan(None, (".pt",)) == [] and scan(tmp_path / "nowhere", (".pt",)) == []


def test_links_that_leave_the_directory_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "loras", tmp_path / "secret"
    touch(outside / "key.safetensors")
    touch(root / "inside.safetensors")
    (root / "escape.safetensors").symlink_to(outside / "key.safetensors")
    (root / "folder").symlink_to(outside, target_is_directory=True)
    (root / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    (root / "alias.safetensors").symlink_to(root / "inside.safetensors")  # a link that stays inside is fine
    assert [f.relative for f in scan(root, (".safetensors",))] == ["alias.safetensors", "inside.safetensors"]


def test_a_file_swapped_for_a_link_out_after_the_scan_is_never_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "loras", touch(tmp_path / "secret.safetensors")
    file = touch(root / "a.safetensors")
    (found,) = scan(root, (".safetensors",))
    assert checked(found, root) == file.resolve()
    file.unlink()
    file.symlink_to(outside)
    with pytest.raises(OutsideDirectory, match="refresh the list"):
        checked(found, root)
