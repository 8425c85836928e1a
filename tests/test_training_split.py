"""The objective base class, `as_objective`, and the Keras wrapper `AdversarialModel`:
`model.fit` reaches the weights of `make_train_function` and `training.fit`."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_conv_bn_model

from sat_tf import activations, attacks, training
from sat_tf.training import objectives

GLOBAL_BATCH, STEPS = 8, 3
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "adversarial_model_mirrored.py")


def _model(seed=0):
    """Conv + BatchNorm + SmoothReLU + Dense: BN checks the attack's inference mode."""
    return tiny_conv_bn_model(seed, activation=activations.get_activation("smooth_relu", name="act"))


def _data(nan_at_step=None):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(STEPS * GLOBAL_BATCH, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=(STEPS * GLOBAL_BATCH,)).astype(np.int32)
    if nan_at_step is not None:
        x[(nan_at_step - 1) * GLOBAL_BATCH, 0, 0, 0] = np.nan
    return x, y


def _dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


OBJECTIVES = {
    # PGD-AT with a random start: equal weights need equal seeds.
    "pgd": lambda model: attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=2),
    "trades": lambda model: objectives.TradesObjective(model, steps=2, beta=6.0),
    # Two rows per image and an epsilon ramp driven by the step counter.
    "smoothadv": lambda model: objectives.SmoothAdvObjective(
        sigma=0.25,
        attack="pgd",
        epsilon=0.5,
        steps=2,
        num_noise=2,
        multi_noise=True,
        warmup_epochs=2,
        steps_per_epoch=2,
    ),
}
STEP = dict(num_classes=3, label_smoothing=0.1, weight_decay=1e-3, seed=7)


def _optimizer():
    return keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)


def _weights(model):
    return [np.asarray(v) for v in model.weights]  # trainable and BN moving statistics


def _keras_fit(name, data, on_nonfinite="stop"):
    model = _model()
    wrapper = training.AdversarialModel(model, OBJECTIVES[name](model), on_nonfinite=on_nonfinite, **STEP)
    wrapper.compile(optimizer=_optimizer())
    history = wrapper.fit(_dataset(*data), epochs=1, verbose=0, shuffle=False)
    return model, wrapper, history.history


def _train_function(name, data, on_nonfinite="stop"):
    model = _model()
    optimizer = _optimizer()
    config = training.StepConfig(global_batch_size=GLOBAL_BATCH, **STEP)
    train = training.make_train_function(
        model, optimizer, OBJECTIVES[name](model), tf.distribute.get_strategy(), config, on_nonfinite=on_nonfinite
    )
    out = train(iter(_dataset(*data)), tf.constant(STEPS))
    return model, optimizer, {k: float(v) for k, v in out.items()}


def _assert_same_weights(a, b):
    for v, got, want in zip(a.weights, _weights(a), _weights(b)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=v.path)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_keras_fit_equals_make_train_function(name):
    data = _data()
    fitted, wrapper, logs = _keras_fit(name, data)
    looped, optimizer, out = _train_function(name, data)
    assert int(wrapper.optimizer.iterations.numpy()) == int(optimizer.iterations.numpy()) == STEPS
    moved = max(float(np.abs(a - b).max()) for a, b in zip(_weights(fitted), _weights(_model())))
    assert moved > 1e-3  # the steps really trained
    _assert_same_weights(fitted, looped)
    np.testing.assert_allclose(logs["loss"][-1], out["loss_sum"] / out["count"], rtol=1e-5)
    np.testing.assert_allclose(logs["adv_accuracy"][-1], out["correct"] / out["count"], rtol=1e-6)
    assert logs["nonfinite_fraction"] == [0.0]


@pytest.mark.parametrize("name", ["pgd", "trades"])
def test_keras_fit_equals_training_fit(tmp_path, name):
    data = _data()
    fitted, _, logs = _keras_fit(name, data)
    model = _model()
    history = training.fit(
        model,
        _optimizer(),
        OBJECTIVES[name](model),
        tf.distribute.get_strategy(),
        lambda epoch, ctx: _dataset(*data),
        config=training.StepConfig(global_batch_size=GLOBAL_BATCH, **STEP),
        epochs=1,
        steps_per_epoch=STEPS,
        workdir=str(tmp_path),
        verbose=False,
    )
    _assert_same_weights(fitted, model)
    np.testing.assert_allclose(logs["loss"][-1], history[-1]["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(logs["adv_accuracy"][-1], history[-1]["train_adv_accuracy"], rtol=1e-6)


def test_keras_fit_skips_a_nonfinite_step_like_the_loop():
    data = _data(nan_at_step=2)
    fitted, wrapper, logs = _keras_fit("pgd", data, on_nonfinite="skip")
    looped, optimizer, out = _train_function("pgd", data, on_nonfinite="skip")
    assert out["nonfinite_loss"] == 1.0
    assert int(wrapper.optimizer.iterations.numpy()) == int(optimizer.iterations.numpy()) == STEPS - 1
    _assert_same_weights(fitted, looped)
    assert all(np.all(np.isfinite(w)) for w in _weights(fitted))
    np.testing.assert_allclose(logs["nonfinite_fraction"][-1], 1 / STEPS, rtol=1e-6)
    np.testing.assert_allclose(logs["loss"][-1], out["loss_sum"] / out["count"], rtol=1e-5)


def test_keras_fit_with_stop_reports_the_nan_for_terminate_on_nan():
    data = _data(nan_at_step=1)
    model = _model()
    wrapper = training.AdversarialModel(model, OBJECTIVES["pgd"](model), **STEP)
    wrapper.compile(optimizer=_optimizer())
    history = wrapper.fit(
        _dataset(*data), epochs=3, verbose=0, shuffle=False, callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


def test_docstring_example_runs():
    source = training.AdversarialModel.__doc__
    code = re.search(r"```python\n(.*?)```", source, re.S).group(1)
    code = "\n".join(line[4:] for line in code.splitlines())  # the docstring's indentation
    namespace = {}
    exec(compile(code, "AdversarialModel.__doc__", "exec"), namespace)
    assert sorted(namespace["history"].history) == ["adv_accuracy", "loss", "nonfinite_fraction"]


def test_wrapper_takes_a_step_config_or_keywords_not_both():
    model = _model()
    config = training.StepConfig(global_batch_size=None, num_classes=3, seed=3)
    wrapper = training.AdversarialModel(model, attacks.identity_attack, config=config)
    assert wrapper.step_config is config
    assert training.AdversarialModel(model, attacks.identity_attack).step_config.num_classes == 3
    with pytest.raises(ValueError, match="either `config` or step keyword arguments"):
        training.AdversarialModel(model, attacks.identity_attack, config=config, seed=1)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['epsilon'\\]"):
        training.AdversarialModel(model, attacks.identity_attack, epsilon=0.1)
    with pytest.raises(ValueError, match="on_nonfinite"):
        training.AdversarialModel(model, attacks.identity_attack, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="takes no `loss`"):
        training.AdversarialModel(model, attacks.identity_attack).compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="Expected an instance of"):
        training.AdversarialModel(model, "pgd")


# === Objective and as_objective ===


def test_objectives_subclass_the_base_class():
    model = _model()
    assert isinstance(objectives.TradesObjective(model), objectives.Objective)
    assert isinstance(objectives.SmoothAdvObjective(sigma=0.25), objectives.Objective)
    assert training.Objective is objectives.Objective and training.AttackObjective is objectives.AttackObjective
    assert objectives.SmoothAdvObjective(sigma=0.25, num_noise=3, multi_noise=True).rows_per_example == 3
    assert objectives.TradesObjective(model).weight_perturbation(None, 0) is None


def test_objective_defaults():
    class Shift(objectives.Objective):
        def training_batch(self, logits_fn, x, y, *, seed, step):
            return x + 0.1, y

    objective = Shift()
    assert objective.rows_per_example == 1 and objective.weight_perturbation(None, 0) is None
    x, y = _data()
    model = _model()
    per_example, logits, labels = objective.loss(
        lambda z: model(z, training=False), (x[:4], y[:4]), None, num_classes=3, label_smoothing=0.0
    )
    expected = training.cross_entropy(model(x[:4], training=False), y[:4], 3)
    np.testing.assert_allclose(per_example, expected, rtol=1e-6)
    assert logits.shape == (4, 3) and list(labels) == list(y[:4])
    with pytest.raises(NotImplementedError, match="must define training_batch"):
        objectives.Objective().training_batch(None, x, y, seed=None, step=0)


def test_as_objective_wraps_attacks_and_passes_objectives_through():
    pgd = attacks.get_attack("pgd", eps=0.1, step_size=0.05, steps=1)
    wrapped = training.as_objective(pgd)
    assert isinstance(wrapped, training.AttackObjective) and wrapped.attack is pgd
    trades = objectives.TradesObjective(_model())
    assert training.as_objective(trades) is trades
    assert training.as_objective(wrapped) is wrapped

    def attack(logits_fn, x, y, seed=None):
        return x

    assert training.as_objective(attack).attack is attack


class _DuckObjective:
    rows_per_example = 1

    def training_batch(self, logits_fn, x, y, *, seed, step):
        return x, y


@pytest.mark.parametrize(
    "value,match",
    [
        (objectives.TradesObjective, "got the class TradesObjective, not an instance"),
        (_DuckObjective(), "objectives must subclass `Objective`"),
        ("pgd", "Received: attack='pgd' of type str"),
        (None, "Received: attack=None of type NoneType"),
        (lambda x: x, "cannot be called with \\(logits_fn, x, y, seed=...\\)"),
    ],
    ids=["class", "duck_typed", "string", "none", "one_argument"],
)
def test_as_objective_rejects_everything_else(value, match):
    with pytest.raises(TypeError, match="Expected an instance of `sat_tf.training.objectives.Objective`"):
        training.as_objective(value)
    with pytest.raises(TypeError, match=match):
        training.as_objective(value)
    config = training.StepConfig(global_batch_size=8, num_classes=3)
    with pytest.raises(TypeError, match=match):
        training.make_train_function(_model(), _optimizer(), value, tf.distribute.get_strategy(), config)


# === Public API kept by the split ===


def test_public_api_is_reexported():
    from sat_tf.training import checkpoints, errors, loop, losses, step

    assert training.fit is loop.fit
    assert training.StepConfig is step.StepConfig and training.make_train_function is step.make_train_function
    assert training.restore_latest is checkpoints.restore_latest and training.unreadable is checkpoints.unreadable
    assert training.cross_entropy is losses.cross_entropy and training.default_loss is losses.default_loss
    for name in ("DivergenceError", "PreemptedError", "WorkerFailedError", "CheckpointError"):
        assert getattr(training, name) is getattr(errors, name)
    assert callable(training.make_seed) and callable(training.decayed_variables) and callable(training.all_finite)
    assert not hasattr(training, "weights_digest")
    assert set(training.__all__) <= set(dir(training))


# === MirroredStrategy (own process: logical devices are set before TF starts) ===


@pytest.mark.slow  # ~35 s: four fits and two loops on 2 logical CPUs
def test_wrapper_under_mirrored_equals_one_device_and_the_loop():
    proc = subprocess.run(
        [sys.executable, SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = dict(re.findall(r"^(\w+) (\S+)$", proc.stdout, re.M))
    assert found.get("replicas") == "2", proc.stdout
    assert float(found["moved"]) > 1e-3, proc.stdout
    # Fit on 2 replicas = fit on one device (no random start: per-replica seeds differ by design).
    assert float(found["fit_mirrored_vs_one_device"]) < 1e-6, proc.stdout
    # Fit on 2 replicas = make_train_function on 2 replicas, random start and TRADES included.
    assert float(found["fit_vs_loop_pgd"]) < 1e-6, proc.stdout
    assert float(found["fit_vs_loop_trades"]) < 1e-6, proc.stdout
    assert abs(float(found["loss_mirrored"]) - float(found["loss_one_device"])) < 1e-5, proc.stdout


# === Errors name library arguments; the launchers add the flags ===


def test_launchers_add_flag_hints_to_a_divergence_error():
    code = (
        "from launch import common\n"
        "from sat_tf import training\n"
        "def main(argv):\n"
        "    raise training.DivergenceError('NaN/Inf training loss at step 2; pass on_nonfinite=\"skip\"')\n"
        "common.run(main)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: NaN/Inf training loss at step 2"), last
    assert (
        "(--config.system.on_nonfinite=skip skips such steps, --config.system.max_skipped_steps caps them)" in last
    ), last
