"""Shared test settings."""

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread_no_bars():
    """One torch thread and no progress bars for a module of training runs: tiny models gain
    nothing from a second thread, and other processes (loader workers, a parallel test) keep
    their core. OMP_NUM_THREADS=1 too, which train() and evaluation honour (as the subprocesses
    these tests start do), rather than their cores - num_workers rule."""
    threads = torch.get_num_threads()
    saved = {key: os.environ.get(key) for key in ("TQDM_DISABLE", "OMP_NUM_THREADS")}
    torch.set_num_threads(1)
    os.environ.update(TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    yield
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            del os.environ[key]
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """datasets.pkl of a 24-study phantom at 64 px (about 4 training batches of 4), shared by
    the modules that train tiny models (test_train.py, test_inference.py)."""
    from medclip_nb.data.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom

    root = tmp_path_factory.mktemp("tiny_phantom")
    generate_phantom(root / "mimic", studies=24, size=64)
    prepare_mimic(root / "mimic", root / "prepared", num_workers=1)
    return root / "prepared" / "datasets.pkl"
