"""Image store integrity (refusing a tampered or stale store) and the atomic swap of a rebuild."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from test_store import SHAPES, SIZE, _direct, _write_dataset, _xray

from medclip_nb.cli import main
from medclip_nb.data import store_build as store_module
from medclip_nb.data.store import ImageStore, StoreIntegrityError, current_build
from medclip_nb.data.store_build import build_store
from medclip_nb.errors import DataError


@pytest.fixture
def built(tmp_path):
    manifest, names = _write_dataset(tmp_path / "ds", SHAPES)
    folder = build_store(manifest, size=SIZE, num_workers=0)
    return manifest, names, folder, current_build(folder)


def _edit_index(build, edit):
    index = json.loads((build / "index.json").read_text())
    edit(index["rows"])
    (build / "index.json").write_text(json.dumps(index))


def _open(manifest, folder):
    return ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)


def test_swapped_index_rows_are_refused(built):
    manifest, names, folder, build = built
    _edit_index(build, lambda rows: rows.update({names[0]: rows[names[1]], names[1]: rows[names[0]]}))
    with pytest.raises(StoreIntegrityError, match="not list the image paths in the order .*--rebuild"):
        _open(manifest, folder)


def test_a_row_of_minus_one_is_refused(built):
    manifest, names, folder, build = built
    _edit_index(build, lambda rows: rows.update({names[2]: -1}))
    with pytest.raises(StoreIntegrityError, match="not a permutation of rows 0..5"):
        _open(manifest, folder)
    _edit_index(build, lambda rows: rows.update({names[2]: "2"}))
    with pytest.raises(StoreIntegrityError, match="not an integer row"):
        _open(manifest, folder)


def test_overwritten_pixels_of_the_same_size_are_refused(built):
    manifest, names, folder, build = built
    with open(build / "images.u8", "r+b") as f:
        f.seek(3 * SIZE * SIZE + 100)
        f.write(b"\x07" * 50)
    with pytest.raises(StoreIntegrityError, match=r"1 of 6 checked rows differ .*row 3"):
        _open(manifest, folder)
    # Not rebuilt unless asked: `cache` refuses with one line, `cache --rebuild` decodes again.
    assert main(["cache", "--data_path", str(manifest), "--size", str(SIZE), "--num-workers", "0"]) == 2
    assert main(["cache", "--data_path", str(manifest), "--size", str(SIZE), "--num-workers", "0",
                 "--rebuild", "--verify"]) == 0
    np.testing.assert_array_equal(_open(manifest, folder).get(names[3]), _direct(manifest.parent / names[3]))


def test_replaced_source_image_is_refused_until_rebuilt(built):
    manifest, names, folder, build = built
    replaced = manifest.parent / names[4]
    Image.fromarray(255 - _xray(36, 36, 4), mode="L").save(replaced, quality=95)
    os.utime(replaced, ns=(10**18, 10**18))  # the dataset file is left as it was
    with pytest.raises(DataError, match="1 of its image files changed since they were stored"):
        _open(manifest, folder)
    build_store(manifest, size=SIZE, num_workers=0)  # a stale store is rebuilt by `cache` / `data`
    np.testing.assert_array_equal(_open(manifest, folder).get(names[4]), _direct(replaced))


def _snapshot(folder):
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))} | {"link": os.readlink(folder / "current")}


def test_checking_a_complete_store_is_read_only(built, monkeypatch, capsys):
    manifest, names, folder, build = built
    before = _snapshot(folder)
    monkeypatch.setattr(store_module, "decode_for_store", lambda *a: pytest.fail("decoded an image"))
    build_store(manifest, size=SIZE, num_workers=0)
    assert "complete and current" in capsys.readouterr().out
    assert _snapshot(folder) == before


def test_rebuild_swaps_in_atomically_and_keeps_the_store_usable(built, monkeypatch):
    manifest, names, folder, first = built
    old_store = _open(manifest, folder)
    real_decode = store_module.decode_for_store
    opened_meanwhile = []

    def decode_and_open(path, size):
        opened_meanwhile.append(_open(manifest, folder).build_dir)  # a job starting mid-build
        return real_decode(path, size)

    monkeypatch.setattr(store_module, "decode_for_store", decode_and_open)
    build_store(manifest, size=SIZE, num_workers=0, rebuild=True)
    second = current_build(folder)
    assert second != first and set(opened_meanwhile) == {first}
    assert (folder / "current").is_symlink() and first.is_dir()  # the replaced build is kept for running jobs
    np.testing.assert_array_equal(old_store.get(names[0]), _open(manifest, folder).get(names[0]))
    build_store(manifest, size=SIZE, num_workers=0, rebuild=True)
    assert not first.exists() and second.is_dir()  # two rebuilds later the first one goes
    assert sorted(p.name for p in folder.iterdir()) == ["builds", "current"]


def test_a_version_1_store_is_refused_then_replaced_by_a_build(tmp_path):
    manifest, names = _write_dataset(tmp_path / "ds", SHAPES)
    folder = manifest.parent / f"image_store_{SIZE}"
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps({"meta": {"version": 1, "size": SIZE}, "rows": {}, "failed": {}}))
    (folder / "images.u8").write_bytes(b"\0" * 10)
    (folder / "notes.txt").write_text("a user's file")
    with pytest.raises(DataError, match="version 1 .*rebuild"):
        _open(manifest, folder)
    build_store(manifest, size=SIZE, num_workers=0)
    assert sorted(p.name for p in folder.iterdir()) == ["builds", "current", "notes.txt"]  # only our files went
    np.testing.assert_array_equal(_open(manifest, folder).get(names[0]), _direct(manifest.parent / names[0]))
