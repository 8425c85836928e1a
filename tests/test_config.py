"""sat_tf/config.py: every launch/configs/ file validates, bad fields are one message naming the field,
the value and what is allowed, and run_config.json round-trips (through tf.io.gfile: ram:// here)."""

import glob
import os
import sys

import pytest
from conftest import ROOT
from ml_collections import config_flags

from sat_tf import config as config_lib

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "launch", "configs", "[a-z]*.py")))


def _load(path):
    sys.path.insert(0, ROOT)
    return config_flags.config_flags._LoadConfigModule("config", path).get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_every_config_file_validates_and_documents_its_command(path):
    config = _load(path)
    if config.data.name == "imagenet":
        config.data.data_dir = "/data/imagenet"
    config_lib.validate(config)
    module_doc = open(path).read().split('"""')[1]
    assert "python launch/train" in module_doc, "the docstring holds the launch command"


def test_default_config_is_the_sat_digits_main_job():
    c = _load(os.path.join(ROOT, "launch", "configs", "digits_sat.py"))
    assert (c.data.name, c.model.name, c.model.activation, c.schedule.epochs) == ("digits", "digits_cnn", "silu", 30)
    assert (c.attack.name, c.attack.steps, c.attack.eps, c.attack.step_size) == ("pgd", 2, 32 / 255, 16 / 255)
    assert c.objective.label_smoothing == 0.1


@pytest.mark.parametrize(
    "name, smoothing",
    [
        ("rat_cifar10", 0.0),
        ("trades_cifar10", 0.0),
        ("awp_rat_cifar10", 0.0),
        ("pgd_at_cifar10", 0.0),
        ("rat_digits", 0.0),
        ("digits_gaussian", 0.0),
        ("digits_smoothadv", 0.0),
        ("imagenet_sat", 0.1),
        ("digits_sat", 0.1),
        ("wang2023_cifar10", 0.1),
    ],
)
def test_each_objective_config_carries_its_papers_label_smoothing(name, smoothing):
    assert _load(os.path.join(ROOT, "launch", "configs", f"{name}.py")).objective.label_smoothing == smoothing


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("attack.eps", 8.0, "[0, 1]"),  # 0-255 units by mistake
        ("attack.eps", float("nan"), "[0, 1]"),
        ("attack.step_size", 0.5, "at most 2 x attack.eps"),
        ("attack.steps", -1, "an integer in [0, inf]"),
        ("attack.name", "cw", "one of ["),
        ("model.name", "resnet9000", "one of ["),
        ("model.activation", "tanhh", "one of ["),
        ("data.name", "imagenet_9", "one of ["),
        ("objective.name", "gairat", "one of ['adversarial'"),
        ("objective.mart_beta", -1.0, "[0, inf]"),
        ("data.generated_fraction", 1.0, "[0, 1)"),
        ("optimizer.ema_warmup_epochs", -1.0, "[0, inf]"),
        ("model.depth", 0, "an integer in [1, inf] or None"),
        ("objective.rat_alpha", 2.0, "[0, 1]"),
        ("objective.trades_start", "zero", "uniform"),
        ("objective.label_smoothing", 1.0, "[0, 1)"),
        ("objective.smoothadv.num_noise", 0, "[1, 256]"),
        ("optimizer.learning_rate", 0.0, "(0, inf]"),
        ("optimizer.learning_rate", float("inf"), "a finite number > 0"),
        ("optimizer.momentum", 1.5, "[0, 1)"),
        ("schedule.epochs", 0, "an integer in [1, inf]"),
        ("schedule.decay", "linear", "one of ['constant', 'cosine', 'step']"),
        ("schedule.decay_epochs", (-5,), "a tuple of integers >= 0"),
        ("system.seed", 2**32, "[0, 4294967296)"),
        ("system.strategy", "horovod", "one of ["),
        ("system.on_nonfinite", "ignore", "one of ['skip', 'stop']"),
        ("system.fused_kernels", None, "true or false"),
        ("eval.step_size", 0.5, "at most 2 x the eval eps"),
        ("eval.autoattack", "fast", "one of ["),
        ("data.limit_train", 0, "an integer in [1, inf] or None"),
        ("model.load_sparta", "/nonexistent/sparta.npz", "'sparta' with model.load_sparta"),
    ],
)
def test_a_bad_field_names_the_field_the_value_and_the_allowed_range(field, value, allowed):
    config = config_lib.base()
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config)
    message = str(err.value)
    assert message.startswith("config.") and "allowed:" in message and allowed in message, message
    named = "model.activation" if field == "model.load_sparta" else field
    assert f"config.{named}=" in message, message


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"objective.name": "gaussian", "objective.noise_sd": 0.25}, "attack.name"),  # the SAT attack does not apply
        ({"objective.name": "gaussian", "attack.name": "none"}, "objective.noise_sd"),  # sigma 0 smooths nothing
        ({"objective.name": "trades", "attack.steps": 0}, "attack.steps"),
        ({"objective.name": "mart", "attack.steps": 0}, "attack.steps"),
        ({"data.generated_fraction": 0.7}, "data.generated_path"),  # a fraction of nothing
        ({"data.generated_path": "gen/*.tfrecord"}, "data.generated_fraction"),  # files, but 0 % of the batch
        (
            {
                "data.name": "imagenet",
                "data.data_dir": "/x",
                "data.num_classes": 1000,
                "data.generated_path": "g/*",
                "data.generated_fraction": 0.5,
            },
            "data.generated_path",
        ),
        ({"data.name": "imagenet"}, "data.data_dir"),
        ({"model.init_use_ema": True}, "model.init_use_ema"),
        ({"system.tpu": "my-tpu", "system.strategy": "mirrored"}, "system.strategy"),
    ],
)
def test_cross_field_rules_name_the_field(changes, field):
    config = config_lib.base()
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=f"^config.{field}="):
        config_lib.validate(config)


def test_run_config_round_trips_through_gfile():
    config = config_lib.base()
    config.unlock()
    config.model.input_shape = (8, 8, 1)
    config.data.num_classes = 10
    config.lock()
    config_lib.save(config, "ram://sat_tf_config_test/run")
    loaded = config_lib.load("ram://sat_tf_config_test/run")
    assert loaded.to_dict() == config.to_dict()
    assert config_lib.model_kwargs(loaded) == {"num_classes": 10, "activation": "silu", "input_shape": [8, 8, 1]}
    with pytest.raises(FileNotFoundError, match="run_config.json does not exist"):
        config_lib.load("ram://sat_tf_config_test/missing")


# A bad --config.* override through launch/train.py (one `error:` line naming the field): tests/test_bad_flags.py.
