"""A Job that writes where its pod mounts a volume read-only fails at once, in one line naming the mount."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from apps.foundation.errors import CONFIG_ERROR_EXIT_CODE
from apps.foundation.files import mount_point
from helpers.core import LIMIT_S, REPO

MOUNTINFO = (
    "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "66 22 254:0 /tmp/src /app/data ro,relatime - ext4 /dev/vda rw\n"
    "67 22 0:5 / /app/data\\040b rw - tmpfs tmpfs rw\n"
)


def test_mount_point_is_the_longest_mount_above_the_path(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    assert mount_point("/app/data/chips/x.npy", table) == "/app/data"
    assert mount_point("/app/data b/x", table) == "/app/data b"
    assert mount_point("/app/database", table) == "/"
    assert mount_point("/app", tmp_path / "missing") == "/"


def read_only_bind(source, target, *argv) -> list[str]:
    """argv run in a private mount namespace where ``target`` is ``source`` bound read-only."""
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(source), str(target), *argv]


@pytest.fixture
def read_only_mount(tmp_path):
    source, target = tmp_path / "volume", tmp_path / "mnt"
    source.mkdir()
    target.mkdir()
    if shutil.which("unshare") is None or subprocess.run(read_only_bind(source, target, "true")).returncode != 0:
        pytest.skip("mount namespaces are not available here (needs unshare as root)")
    return source, target


@pytest.mark.slow
def test_a_prep_writing_to_a_read_only_mount_fails_in_one_line_naming_it(read_only_mount, tmp_path):
    source, target = read_only_mount
    argv = [sys.executable, "-m", "data_prep.synthetic", f"out_dir={target}/scenes", "n_scenes=1", "size=64"]
    proc = subprocess.run(read_only_bind(source, target, *argv), cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == CONFIG_ERROR_EXIT_CODE, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{target} is mounted read-only" in lines[0], proc.stderr
    assert not any(source.iterdir())
