"""Singh et al. 2023's ImageNet recipe (launch/configs/singh2023_imagenet.py) and the pieces it adds:
config validation, AdamW with decoupled decay and its exclusions, a start from a .keras file, and a
few training steps of a tiny ConvNeXt + ConvStem on the tiny ImageNet TFRecords with mixup/cutmix
and APGD-2 (the counters prove both ran: batches mixed, CutMix draws, the attack's perturbation).
"""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_launcher_in_process

from launch import training_setup
from launch.configs import singh2023_imagenet
from sat_tf import config as config_lib
from sat_tf import models
from sat_tf.seeds import make_seed
from sat_tf.training import mixup

TINY_OPTIONS = ('stem="convstem"', "depths=[1,1,1,1]", "dims=[8,8,16,16]", "convstem_convs=[[8,2],[8,2]]")


def _config(**overrides):
    c = singh2023_imagenet.get_config()
    c.data.data_dir = "/nonexistent"  # validate() checks values only
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _tiny_convnext(seed=0, dims=(8, 8, 16, 16)):
    import keras

    keras.utils.set_random_seed(seed)
    return models.build_model(
        "convnext_tiny",
        num_classes=4,
        input_shape=(32, 32, 3),
        activation="gelu_erf",
        preprocessing="none",
        stem="convstem",
        depths=[1, 1, 1, 1],
        dims=list(dims),
        convstem_convs=[[8, 2], [8, 2]],
    )


def test_recipe_values():
    c = config_lib.validate(_config())
    assert (c.attack.name, c.attack.steps, c.attack.eps) == ("apgd", 2, 4 / 255)
    assert (c.mixup.mixup_alpha, c.mixup.cutmix_alpha, c.mixup.prob, c.mixup.switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert (c.optimizer.name, c.optimizer.beta_1, c.optimizer.beta_2, c.optimizer.weight_decay) == (
        "adamw",
        0.9,
        0.95,
        0.05,
    )
    assert c.optimizer.ema_decay == 0.9999 and c.objective.label_smoothing == 0.1
    assert c.optimizer.learning_rate * c.schedule.batch_size / 256 == pytest.approx(1e-3)
    assert (c.schedule.decay, c.schedule.warmup_epochs, c.schedule.epochs) == ("cosine", 20.0, 300)
    kwargs = config_lib.model_kwargs(c)
    assert kwargs["stem"] == "convstem" and kwargs["preprocessing"] == "none" and kwargs["activation"] == "gelu_erf"
    assert training_setup.l2_weight_decay(c) == 0.0  # AdamW decays through the optimizer only


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attack.name": "pgd"}, "config.attack.name='pgd' is invalid; allowed: one of ['apgd', 'none'] with mixup"),
        ({"objective.name": "trades"}, "config.objective.name='trades' is invalid; allowed: 'adversarial' with mixup"),
        ({"model.options": ("stem=convstem",)}, "config.model.options=('stem=convstem',) is invalid"),
        ({"optimizer.no_decay": "norms"}, "config.optimizer.no_decay='norms' is invalid"),
        ({"mixup.switch_prob": 1.5}, "config.mixup.switch_prob=1.5 is invalid"),
        (
            {"model.init_checkpoint": "/nonexistent/clean.keras"},
            "config.model.init_checkpoint='/nonexistent/clean.keras'",
        ),
    ],
)
def test_bad_values_are_one_error_naming_the_field(overrides, message):
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(_config(**overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mixup_off_keeps_every_attack():
    config_lib.validate(_config(**{"mixup.mixup_alpha": 0.0, "mixup.cutmix_alpha": 0.0, "attack.name": "pgd"}))


@pytest.mark.parametrize("rule", ["biases", "vectors"])
def test_adamw_decays_decoupled_except_the_rule(rule):
    model = _tiny_convnext()
    config = _config(**{"optimizer.no_decay": rule})
    lr, wd = 0.01, config.optimizer.weight_decay
    optimizer = training_setup.make_optimizer(config, lr, model)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.95, 1e-8)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # biases and offsets start at 0, which decay leaves alone
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    # zero gradients: Adam's step is 0, so what moves is the decoupled decay w <- w (1 - lr wd)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    decayed, kept = set(), set()
    for v in model.trainable_variables:
        w0 = before[v.path]
        if np.allclose(v.numpy(), w0 * (1 - lr * wd), rtol=1e-6, atol=0):
            decayed.add(v.path)
        else:
            np.testing.assert_array_equal(v.numpy(), w0)
            kept.add(v.path)
    leaf = {p: p.split("/")[-1] for p in decayed | kept}
    assert any(leaf[p] == "kernel" for p in decayed) and not any(leaf[p] == "kernel" for p in kept)
    layer_scale = {p for p in decayed | kept if p.endswith("_gamma/gamma")}
    norm_scales = {p for p in decayed | kept if p.endswith("norm/gamma") or "stem_stem_1" in p and leaf[p] == "gamma"}
    norm_offsets = {p for p in decayed | kept if leaf[p] in ("beta", "bias")}
    assert layer_scale and norm_scales and norm_offsets and any(leaf[p] == "bias" for p in norm_offsets)
    assert norm_offsets <= kept
    if rule == "biases":  # Singh et al.'s ConvNeXt rule: LayerNorm scales and layer scale decay
        assert layer_scale <= decayed and norm_scales <= decayed
    else:  # timm filter_bias_and_bn: every vector is left alone
        assert layer_scale <= kept and norm_scales <= kept


def test_init_from_a_keras_file(tmp_path):
    source = _tiny_convnext(seed=1)
    path = str(tmp_path / "clean.keras")
    source.save(path)
    target = _tiny_convnext(seed=2)
    assert not np.allclose(target.weights[0].numpy(), source.weights[0].numpy())
    summary = training_setup.load_init_weights(target, path)
    assert summary.startswith(f"loaded {len(target.weights)} weights from {path}")
    for a, b in zip(target.weights, source.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = _tiny_convnext(seed=3, dims=(8, 8, 16, 32))
    before = [w.numpy().copy() for w in other.weights]
    with pytest.raises(config_lib.ConfigError, match=r"does not fit .*shape differs \(\d+\): "):
        training_setup.load_init_weights(other, path)
    for a, b in zip(other.weights, before):  # nothing assigned
        np.testing.assert_array_equal(a.numpy(), b)


def test_recipe_trains_on_tiny_imagenet_with_mixup_and_apgd(tiny_imagenet, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    steps = 2
    flags = [
        "--config="
        + os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", "configs", "singh2023_imagenet.py"
        ),
        f"--workdir={workdir}",
        f"--config.data.data_dir={tiny_imagenet.data_dir}",
        f"--config.data.num_classes={tiny_imagenet.num_classes}",
        f"--config.data.num_train={tiny_imagenet.num_train}",
        f"--config.data.limit_train={8 * steps}",
        "--config.data.image_size=32",
        "--config.schedule.batch_size=8",
        "--config.schedule.epochs=1",
        "--config.schedule.warmup_epochs=0.5",
        "--config.system.strategy=default",
        "--config.system.jit=false",  # the expected CutMix draws below are the eager kernels'
        "--config.mode=train",
        "--config.export.enabled=false",
        f"--config.model.options=({','.join(repr(o) for o in TINY_OPTIONS)})",
    ]
    assert run_launcher_in_process("train.py", *flags) == 0
    out = capsys.readouterr().out
    assert "apgd eps=4/255" in out and "mixup 0.8 / cutmix 1" in out
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert history[-1]["step"] == steps and np.isfinite(history[-1]["train_loss"])
    saved = config_lib.load(workdir)
    assert saved.optimizer.name == "adamw" and saved.model.options == TINY_OPTIONS
    match = re.search(
        r"mixup/cutmix: (\d+) batches, (\d+) mixed \(lambda < 1\), (\d+) cutmix draws; "
        r"last attack perturbation L-inf ([0-9.]+)/255",
        out,
    )
    assert match, out
    batches, mixed, cutmix, perturbation = int(match[1]), int(match[2]), int(match[3]), float(match[4])
    assert batches == steps and mixed == steps  # prob 1.0: every batch mixed
    expected_cutmix = sum(
        bool(mixup.sample_params(make_seed(0, step, 0), height=32, width=32)["use_cutmix"]) for step in range(steps)
    )
    assert cutmix == expected_cutmix  # the step's seed drives the draws (exact resume)
    assert 0.5 < perturbation <= 4.0 + 1e-3  # APGD moved the mixed batch, inside the 4/255 ball
