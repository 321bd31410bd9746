"""The config object: defaults, YAML < flags precedence, one-line errors for bad keys and values."""

import subprocess
import sys

import pytest

from medclip_nb.cli import build_parser, main
from medclip_nb.config import Config
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
