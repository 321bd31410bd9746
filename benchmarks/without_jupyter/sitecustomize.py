"""Put on PYTHONPATH by `benchmarks/gpu_check.sh --cpu-dry-run`: Jupyter's packages (and open_clip)
look absent, as they are in a lent GPU machine's own python, so the dry run meets the same skips
and import paths as the GPU run."""

import importlib.abc
import sys

HIDDEN = {"nbformat", "papermill", "nbval", "nbconvert", "nbclient", "ipykernel", "ipywidgets", "IPython",
          "jupyter", "jupyterlab", "jupyter_client", "jupyter_core", "open_clip", "open_clip_train"}


class HideJupyter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by gpu_check.sh --cpu-dry-run)", name=name)
        return None


sys.meta_path.insert(0, HideJupyter())
