"""The config object: defaults, YAML < flags precedence, one-line errors for bad keys and values."""

import subprocess
import sys

import pytest

from medclip_nb.cli import build_parser, main
from medclip_nb.config import Config, from_dict
from medclip_nb.config_load import config_from_args, load_config
from medclip_nb.errors import ConfigError

SEED_FLAGS = {
    "--data_path": None, "--batch_size": 32, "--num_epochs": 10, "--lr": 2e-5, "--weight_decay": 1e-4,
    "--warmup": 0.1, "--eval_batch_size": 64, "--eval_steps": 1000, "--save_steps": None,
    "--num_workers": 4, "--gpu_id": "0", "--seed": 42,
    "--model_save_path": "./checkpoints/mimic_cxr_pretrain", "--resume_from": None, "--use_amp": True,
    "--debug": False,
}


def test_defaults_are_the_seed_scripts():
    cfg = Config()
    for flag, default in SEED_FLAGS.items():
        if default is not None:
            assert getattr(cfg, flag[2:]) == default, flag
    assert cfg.save_steps > 1  # the seed's 1 wrote a checkpoint every step


def test_every_seed_flag_is_in_train_help():
    text = subprocess.run([sys.executable, "-m", "medclip_nb", "train", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for flag in SEED_FLAGS:
        assert flag in text, flag
    assert "--no-use_amp" in text and "--config" in text and "--model" in text


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("batch_size: 8\nlr: 1.0e-3\nnum_epochs: 3\nuse_amp: false\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--batch_size", "16"])
    cfg = config_from_args(args)
    assert cfg.batch_size == 16  # flag beats file
    assert cfg.lr == 1e-3 and cfg.num_epochs == 3 and cfg.use_amp is False  # file beats default
    assert cfg.weight_decay == 1e-4  # default kept
    args = build_parser().parse_args(["train", "--config", str(path), "--use_amp"])
    assert config_from_args(args).use_amp is True


def test_yaml_number_without_dot_is_read_as_number(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("lr: 1e-3\n")  # PyYAML gives the string '1e-3'
    assert load_config(path).lr == 1e-3


@pytest.mark.parametrize(
    "values, key",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"warmup": 1.0}, "warmup"),
        ({"warmup": -0.1}, "warmup"),
        ({"data_path": ""}, "data_path"),
        ({"batch_size": "big"}, "batch_size"),
        ({"use_amp": "yes"}, "use_amp"),
        ({"loss": "triplet"}, "loss"),
        ({"on_bad_image": "replace"}, "on_bad_image"),
        ({"image_size": 300, "resize_size": 256}, "image_size"),
        ({"bogus_key": 1}, "bogus_key"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, values)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: 4\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*learning_rate"):
        load_config(path)


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: 0\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "batch_size" in err and "\n" not in err


def test_flag_type_errors_name_the_flag():
    result = subprocess.run([sys.executable, "-m", "medclip_nb", "train", "--batch_size", "x"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--batch_size" in result.stderr


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_params_files_are_valid():
    from medclip_nb.paths import repo_root

    files = sorted((repo_root() / "params").glob("*.yaml"))
    assert files, "params/*.yaml missing"
    for path in files:
        load_config(path)


# ---- typos: one line with the closest key, on the CLI, in a YAML file and in a notebook ----------
def test_mistyped_key_in_yaml_suggests_the_closest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("batch_sise: 8\n")
    with pytest.raises(ConfigError,
                       match=r"typo\.yaml: unknown config key 'batch_sise' \(did you mean 'batch_size'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'zzzz' \(see `python -m medclip_nb train --help`"):
        from_dict({"zzzz": 1})


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch_sise", "8"], "error: train: unknown flag '--batch_sise' (did you mean '--batch_size'?)"),
    (["predict", "--checkpoint", "c.pth", "--mdoe", "max", "x.jpg"],
     "error: predict: unknown flag '--mdoe' (did you mean '--mode'?)"),
    (["evaluate", "--checkpoint", "c.pth", "--qqqq", "1"], "error: evaluate: unknown flag '--qqqq'"),
])
def test_unknown_flag_is_one_line_exit_2_with_the_closest_flag(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def notebook_namespace(*cells: str) -> dict:
    """What a notebook kernel holds after running `cells` in order: their names and IPython's `In`."""
    namespace: dict = {}
    for cell in cells:
        exec(cell, namespace)
    namespace.pop("__builtins__", None)
    namespace["In"] = ["", *cells]
    return namespace


PARAMETERS = "# Config keys: defaults\nbatch_size = 4\nlr = ...\ndata_path = 'd.pkl'\n"


def test_notebook_parameters_apply_and_ellipsis_keeps_the_default():
    from medclip_nb.config_load import config_from_namespace

    cfg = config_from_namespace(notebook_namespace(PARAMETERS, "# Parameters\nlr = 0.5\n"))
    assert (cfg.batch_size, cfg.lr, cfg.data_path) == (4, 0.5, "d.pkl")
    assert config_from_namespace(notebook_namespace(PARAMETERS)).lr == Config().lr


@pytest.mark.parametrize("injected", ["# Parameters\nbatch_sise = 8\n", "# Parameters\nlr = 0.1\nbatch_sise = 8\n"])
def test_notebook_parameter_typo_is_refused_with_the_closest_key(injected):
    from medclip_nb.config_load import config_from_namespace

    namespace = notebook_namespace(PARAMETERS, injected, "x = 1\nlog = []\n")  # other cells' names are fine
    with pytest.raises(ConfigError, match=r"^notebook parameter: unknown config key 'batch_sise' "
                                          r"\(did you mean 'batch_size'\?\)$"):
        config_from_namespace(namespace)


def test_notebook_parameters_cell_edited_with_a_typo_is_refused():
    from medclip_nb.config_load import config_from_namespace

    with pytest.raises(ConfigError, match="did you mean 'num_epochs'"):
        config_from_namespace(notebook_namespace(PARAMETERS + "num_epoch = 2\n"))


def test_user_errors_show_as_one_line_in_ipython():
    """IPython shows `_render_traceback_` instead of a traceback: the CLI's line, in the cell and in papermill."""
    assert ConfigError("x.yaml: bad")._render_traceback_() == ["error: x.yaml: bad"]


# ---- paths: flags from the current folder, YAML and notebooks from the repository root -----------
def test_path_flags_are_taken_from_the_current_folder(tmp_path, monkeypatch):
    from medclip_nb.paths import repo_root

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--data_path", "d/x.pkl", "--image_store", "auto",
                                      "--resume_from", "latest", "--model_save_path", "/abs/out"])
    cfg = config_from_args(args)
    assert cfg.path("data_path") == tmp_path / "d" / "x.pkl"
    assert (cfg.image_store, cfg.resume_from, cfg.model_save_path) == ("auto", "latest", "/abs/out")
    predict = build_parser().parse_args(["predict", "--checkpoint", "c.pth", "img.jpg"])
    assert (predict.checkpoint, predict.paths) == (str(tmp_path / "c.pth"), [str(tmp_path / "img.jpg")])
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("data_path: data/phantom/datasets.pkl\n")
    from_yaml = config_from_args(build_parser().parse_args(["train", "--config", "p.yaml"]))
    assert from_yaml.path("data_path") == repo_root() / "data/phantom/datasets.pkl"  # YAML: the repository root
    monkeypatch.chdir(repo_root())  # from the root a flag stays as typed (the same place either way)
    assert config_from_args(build_parser().parse_args(["train", "--data_path", "d/x.pkl"])).data_path == "d/x.pkl"


def test_cli_reads_a_relative_path_from_the_current_folder(tmp_path):
    """`convert --data_path x.pkl` in another folder reads that folder's x.pkl (and names it in errors)."""
    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    run = subprocess.run([sys.executable, "-m", "medclip_nb", "convert", "--data_path", "x.pkl"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and str(tmp_path / "x.pkl") in run.stderr, run.stderr


def test_messages_show_repository_paths_relative_to_the_root(tmp_path):
    from medclip_nb.paths import repo_root, shown

    assert shown(repo_root() / "checkpoints" / "debug" / "best.pth") == "checkpoints/debug/best.pth"
    assert shown(tmp_path / "x") == str(tmp_path / "x") and shown("rel/x") == "rel/x"
