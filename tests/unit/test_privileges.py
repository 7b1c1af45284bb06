"""Whether the user a root connect becomes can still read what it imports."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ktpy.privileges import interpreter_paths, readable_by

UID, GID = 54321, 54321  # nobody on this machine owns these


def _below(top: Path) -> Callable[[Path], os.stat_result]:
    """Real modes at and below top; above it (pytest's private directories) the
    directories count as root's 0755 ones."""
    open_dir = os.stat_result((0o40755, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def stat_of(path: Path) -> os.stat_result:
        return path.stat() if path == top or top in path.parents else open_dir

    return stat_of


def test_a_file_in_world_readable_directories_is_readable(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "lib").mkdir(mode=0o755)
    module = tmp_path / "lib" / "m.py"
    module.write_text("x = 1\n")
    module.chmod(0o644)
    assert readable_by(module, UID, GID, stat_of=_below(tmp_path))
    assert readable_by(tmp_path / "lib", UID, GID, stat_of=_below(tmp_path))


def test_a_private_directory_on_the_way_makes_it_unreadable(tmp_path: Path) -> None:
    """As a pyenv interpreter under /root (0700) is for the user behind sudo."""
    tmp_path.chmod(0o755)
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    (home / "lib").mkdir(mode=0o755)
    assert not readable_by(home / "lib", UID, GID, stat_of=_below(tmp_path))
    home.chmod(0o711)  # searchable: the directories below decide
    assert readable_by(home / "lib", UID, GID, stat_of=_below(tmp_path))


def test_owner_and_group_bits_count_for_their_owner_and_group(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    secret = tmp_path / "s"
    secret.write_text("")
    secret.chmod(0o640)
    assert not readable_by(secret, UID, GID, stat_of=_below(tmp_path))
    assert readable_by(
        secret, UID, secret.stat().st_gid, stat_of=_below(tmp_path)
    )  # the file's group may read
    assert not readable_by(tmp_path / "missing", UID, GID, stat_of=_below(tmp_path))


def test_the_interpreter_paths_include_the_standard_library_and_ktpy() -> None:
    paths = interpreter_paths()
    assert any((p / "os.py").exists() for p in paths)
    assert any((p / "privileges.py").exists() for p in paths)
