"""Output files get the user's umask mode; `prepare` does not import torch."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from medclip_nb.files import umask_file_mode, write_bytes_atomic

REPO = Path(__file__).resolve().parents[1]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert umask_file_mode() == 0o644
        write_bytes_atomic(tmp_path / "a.json", b"{}")
        os.umask(0o027)
        assert umask_file_mode() == 0o640
        write_bytes_atomic(tmp_path / "b.json", b"{}")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a.json") == 0o644 and _mode(tmp_path / "b.json") == 0o640
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporary left


def test_prepare_writes_umask_modes_without_importing_torch(tmp_path):
    script = f"""
import os, sys
os.umask(0o022)
from medclip_nb.phantom import generate_phantom
from medclip_nb.data.mimic import prepare_mimic
generate_phantom({str(tmp_path / 'mimic')!r}, studies=40, size=32, seed=1)
prepare_mimic({str(tmp_path / 'mimic')!r}, {str(tmp_path / 'out')!r}, unpaired_fraction=0.3)
print("torch imported:", "torch" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout
    for name in ("datasets.pkl", "prepare_report.json"):
        assert _mode(tmp_path / "out" / name) == 0o644, name


def test_a_failed_atomic_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    from medclip_nb.errors import DataError
    from medclip_nb.files import write_atomic, write_json_atomic

    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"a": 1})

    def half_then_full_disk(tmp):
        tmp.write_text("{half")
        raise OSError(28, "No space left on device")

    try:
        write_atomic(target, half_then_full_disk, what="metrics file", error=DataError)
    except DataError as e:
        message = str(e)
    assert message == f"metrics file {target}: cannot be written (no space left on device); the previous file is intact"
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_interrupted_atomic_write_leaves_no_temporary(tmp_path):
    from medclip_nb.files import write_atomic

    def interrupted(tmp):
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    try:
        write_atomic(tmp_path / "out.bin", interrupted)
    except KeyboardInterrupt:
        pass
    assert list(tmp_path.iterdir()) == []
