"""launch/configs/wang2023_cifar10.py: the paper's numbers, and a few training steps of the recipe on a
tiny stand-in (a prepared fake cifar10, a tiny DMWideResNet, a tiny generated TFRecord)."""

import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_launcher_in_process
from test_config import _load
from test_data import _prepare_fake_cifar10

from sat_tf import config as config_lib
from sat_tf.data import generated

CONFIG = os.path.join(ROOT, "launch", "configs", "wang2023_cifar10.py")


def test_the_config_carries_the_released_command():
    c = _load(CONFIG)
    assert (c.model.name, c.model.activation, c.objective.name) == ("dm_wide_resnet28_10", "silu", "trades")
    assert (c.objective.trades_beta, c.objective.label_smoothing) == (5.0, 0.1)
    assert (c.optimizer.ema_decay, c.optimizer.nesterov, c.optimizer.weight_decay) == (0.995, True, 5e-4)
    assert c.optimizer.learning_rate * c.schedule.batch_size / 256 == 0.2 and c.schedule.batch_size == 512
    assert (c.schedule.epochs, c.schedule.decay, c.schedule.warmup_epochs) == (400, "cosine", 10.0)
    assert (c.attack.eps, c.attack.step_size, c.attack.steps) == (8 / 255, 2 / 255, 10)
    assert c.data.generated_fraction == 0.7 and generated.generated_count(512, 0.7) == 358
    config_lib.validate(c)


def _stand_in(tmp_path):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    _prepare_fake_cifar10(tmp_path / "tfds", train_x, np.arange(48) % 10, test_x, np.arange(8) % 10)
    gen_x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    generated.write_generated_records(gen_x, np.arange(40) % 10, str(tmp_path / "gen" / "edm.tfrecord"), num_shards=2)
    return [
        f"--config={CONFIG}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        f"--config.data.generated_path={tmp_path / 'gen' / '*.tfrecord'}",
    ]


TINY = [
    "--config.model.depth=10",
    "--config.model.width=1",
    "--config.schedule.batch_size=16",
    "--config.schedule.steps=3",
    "--config.attack.steps=2",
    "--config.optimizer.ema_warmup_epochs=0.5",
    "--config.eval.autoattack=none",
    "--config.eval.steps=(1,)",
    "--config.export.enabled=False",
    "--config.system.jit=false",
]


def test_the_recipe_trains_a_few_steps_on_a_tiny_stand_in(tmp_path, capsys):
    flags = _stand_in(tmp_path)
    workdir = tmp_path / "run"
    assert run_launcher_in_process("train.py", *flags, *TINY, f"--workdir={workdir}") == 0
    # 16-image batches: int(0.7 * 16) = 11 generated and 5 real images in each.
    assert "generated images: 2 file(s)" in capsys.readouterr().out
    history = json.loads((workdir / "history.json").read_text())
    assert history[-1]["step"] == 3 and np.isfinite(history[-1]["train_loss"])
    saved = json.loads((workdir / "run_config.json").read_text())
    assert saved["data"]["generated_fraction"] == 0.7 and saved["model"]["depth"] == 10
    assert saved["optimizer"]["ema_decay"] == 0.995 and saved["objective"]["trades_beta"] == 5.0
    rows = json.loads((workdir / "report" / "robustness.json").read_text())["results"]
    assert abs(rows["pgd1"]["max_norm"] - 8 / 255) < 1e-6

    bad = f"--config.data.generated_path={tmp_path / 'nowhere' / '*.rec'}"
    with pytest.raises(config_lib.ConfigError) as err:
        run_launcher_in_process("train.py", *flags[:2], bad, *TINY, f"--workdir={tmp_path / 'run2'}")
    message = str(err.value)
    assert message.startswith("config.data.generated_path=") and "matches no file" in message
    assert "write_generated_records" in message and "\n" not in message
