"""Shared test settings."""

import os

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread_no_bars():
    """One torch thread and no progress bars for a module of training runs: tiny models gain
    nothing from a second thread, and other processes (loader workers, a parallel test) keep
    their core."""
    threads, bars = torch.get_num_threads(), os.environ.get("TQDM_DISABLE")
    torch.set_num_threads(1)
    os.environ["TQDM_DISABLE"] = "1"
    yield
    torch.set_num_threads(threads)
    if bars is None:
        del os.environ["TQDM_DISABLE"]
    else:
        os.environ["TQDM_DISABLE"] = bars
