"""benchmarks/torch_reference.py computes what sat_tf computes, so timing the two side by side is a fair comparison.

Keras weights ported into the torch ResNet-18 give the same logits and the same PGD path; the torch SGD step is
the update the docstring promises (weight decay on conv/linear weights only); the sampler is Cohen's loop; the
worker answers its JSON protocol.
"""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch cross-check: pip install -e '.[crosscheck]'")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import ROOT  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from sat_tf import attacks, models  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import torch_reference  # noqa: E402

EPS, STEP = 8 / 255, 2 / 255


@pytest.fixture(scope="module", params=["relu", "silu", "gelu", "softplus", "smooth_relu"])
def ported(request):
    """A Keras resnet18_cifar with random BN statistics (and per-site beta_raw) and its torch port, both eval."""
    keras.utils.set_random_seed(0)
    model = models.build_model("resnet18_cifar", num_classes=10, input_shape=[32, 32, 3], activation=request.param)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            stats = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            layer.set_weights(stats)
        elif layer.weights and layer.weights[0].path.endswith("beta_raw"):
            layer.set_weights([np.float32(rng.uniform(1.0, 4.0))])  # beta 1..16: the sites differ
    torch_model = torch_reference.ResNet18Cifar(request.param)
    torch_reference.load_keras_weights(torch_model, model)
    x = np.random.default_rng(2).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 3, 7, 9])
    return model, torch_model.eval(), x, y


def to_torch(x_nhwc):
    """NHWC numpy -> NCHW torch view, which is channels_last in memory."""
    return torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)


def test_ported_weights_give_the_same_logits_and_parameter_count(ported):
    model, torch_model, x, _ = ported
    ours = model(x, training=False).numpy()
    with torch.no_grad():
        theirs = torch_model(to_torch(x)).numpy()
    assert np.max(np.abs(theirs - ours)) <= 1e-5 * np.max(np.abs(ours))  # erf GELU for tanh: 7e-5
    keras_count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert torch_reference.count_params(torch_model) == keras_count


def test_pgd_follows_our_pgd(ported):
    model, torch_model, x, y = ported
    attack = attacks.get_attack("pgd", eps=EPS, step_size=STEP, steps=3, random_start=False)
    ours = attack(lambda z: model(z, training=False), x, y, seed=0).numpy()
    theirs = (
        torch_reference.pgd_linf(
            torch_model, to_torch(x), torch.from_numpy(y), eps=EPS, step_size=STEP, steps=3, random_start=False
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    diff = np.abs(theirs - ours)
    assert np.mean(diff < 1e-6) >= 0.99  # sign ties of tiny gradients may differ
    assert diff.max() <= 2 * STEP + 1e-6
    assert np.mean(np.abs(ours - x)) > STEP  # the attack did move
    for x_adv in (ours, theirs):
        assert np.abs(x_adv - x).max() <= EPS + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def randomize_statistics(model, rng):
    """Random BN statistics (so eval-mode BN is not the identity) and SmoothReLU betas; returns `model`."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            )
        elif layer.weights and layer.weights[0].path.endswith("beta_raw"):
            layer.set_weights([np.float32(rng.uniform(1.0, 4.0))])
    return model


def assert_same_logits_and_input_gradients(model, torch_model, x, y):
    """The Keras model and its torch port: the same logits and cross-entropy input gradients (1e-5 relative), and
    the same gradient signs, which is what L-inf steps follow."""
    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        ours = model(x_tf, training=False)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, ours))
    ours, our_grad = ours.numpy(), tape.gradient(loss, x_tf).numpy()
    x_t = to_torch(x).contiguous().requires_grad_(True)
    theirs = torch_model(x_t)
    (their_grad,) = torch.autograd.grad(F.cross_entropy(theirs, torch.from_numpy(y), reduction="sum"), [x_t])
    theirs, their_grad = theirs.detach().numpy(), their_grad.permute(0, 2, 3, 1).numpy()
    assert np.max(np.abs(theirs - ours)) <= 1e-5 * np.max(np.abs(ours))
    assert np.max(np.abs(their_grad - our_grad)) <= 1e-5 * np.max(np.abs(our_grad))
    assert np.mean(np.sign(their_grad) == np.sign(our_grad)) > 0.999


@pytest.mark.parametrize("activation", ["silu", "relu", "smooth_relu"])
def test_ported_digits_cnn_gives_the_same_logits_and_input_gradients(activation, tmp_path):
    """The AutoAttack benchmark's model pair: random BN statistics (so eval-mode BN is not the identity) and the
    fixed padding of the strided conv are where a port goes wrong; the gradient is what the attacks follow."""
    keras.utils.set_random_seed(0)
    model = randomize_statistics(models.build_model("digits_cnn", activation=activation), np.random.default_rng(1))
    # Through the .npz the benchmark hands its worker process, so that path is covered too.
    path = tmp_path / "weights.npz"
    torch_reference.save_layer_weights(path, torch_reference.keras_layer_weights(model))
    torch_model = torch_reference.DigitsCNN(activation).eval()
    torch_reference.load_keras_weights(torch_model, torch_reference.load_layer_weights(path))
    assert torch_reference.count_params(torch_model) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    x = np.random.default_rng(2).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    y = np.arange(16) % 10
    assert_same_logits_and_input_gradients(model, torch_model, x, y)


@pytest.mark.parametrize("activation", ["relu", "silu", "smooth_relu"])
@pytest.mark.parametrize("name", ["mnist_resnet_fast", "mnist_resnet"])
def test_ported_mnist_resnet_gives_the_same_logits_and_input_gradients(name, activation, tmp_path):
    """The Fashion-MNIST study's network and its port (what benchmarks/autoattack_time.py runs the reference
    AutoAttack on): strided stem and stages, projection shortcuts, random BN statistics."""
    keras.utils.set_random_seed(0)
    model = randomize_statistics(models.build_model(name, activation=activation), np.random.default_rng(1))
    path = tmp_path / "weights.npz"
    torch_reference.save_layer_weights(path, torch_reference.keras_layer_weights(model))
    kwargs = {"activation": activation, "stem_stride": model.stem_stride, "filters": list(model.filters)}
    torch_model = torch_reference.build_reference_model(
        "mnist_resnet", torch_reference.load_layer_weights(path), **kwargs
    )
    assert torch_reference.count_params(torch_model) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    x = np.random.default_rng(2).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    y = np.arange(16) % 10
    assert_same_logits_and_input_gradients(model, torch_model, x, y)


def test_layer_weights_must_all_be_consumed():
    keras.utils.set_random_seed(0)
    weights = torch_reference.keras_layer_weights(models.build_model("digits_cnn", activation="silu"))
    weights["extra_dense"] = [np.zeros((2, 2), np.float32)]
    with pytest.raises(ValueError, match="extra_dense"):
        torch_reference.load_keras_weights(torch_reference.DigitsCNN("silu"), weights)


def test_ported_mlp_is_the_twin_of_the_autoattack_cross_checks():
    import aa_reference

    model = aa_reference.keras_mlp(3)
    twin = aa_reference.torch_twin(model)
    ported = torch_reference.build_reference_model("mlp", torch_reference.keras_layer_weights(model))
    x = aa_reference.to_nchw(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)))
    with torch.no_grad():
        np.testing.assert_allclose(ported(x).numpy(), twin(x).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ported(x).numpy(), model(aa_reference.to_nhwc(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_reference_log_gives_accuracy_and_seconds_per_attack():
    records = [
        (10.0, "using standard version including apgd-ce, apgd-t, fab-t, square."),
        (11.5, "initial accuracy: 75.00%"),
        (12.0, "apgd-ce - 1/1 - 2 out of 3 successfully perturbed"),
        (14.5, "robust accuracy after APGD-CE: 25.00% (total time 3.0 s)"),
        (20.5, "robust accuracy after APGD-T: 0.00% (total time 9.0 s)"),
        (20.6, "no robust datapoints left, skipping remaining attacks"),
    ]
    accuracy, seconds = torch_reference._parse_reference_log(
        records, ["apgd-ce", "apgd-t", "fab-t", "square"], start=10.0, count=4
    )
    assert accuracy == {"clean": 0.75, "apgd-ce": 0.25, "apgd-t": 0.0, "fab-t": 0.0, "square": 0.0}
    assert seconds == {"clean": 1.5, "apgd-ce": 3.0, "apgd-t": 6.0, "fab-t": 0.0, "square": 0.0}


def test_worker_runs_the_reference_autoattack_with_our_options(tmp_path):
    import aa_reference

    pytest.importorskip("pyautoattack", reason="pip install -e '.[crosscheck]' (pyautoattack)")
    model = aa_reference.keras_mlp(0)
    x, _ = aa_reference.digits_points(12)
    y = model(x).numpy().argmax(1)  # every point correct: each attack has points to work on
    torch_reference.save_layer_weights(tmp_path / "w.npz", torch_reference.keras_layer_weights(model))
    np.savez(tmp_path / "p.npz", x=x.transpose(0, 3, 1, 2), y=y)
    options = {
        "apgd-ce": {"steps": 3},
        "apgd-t": {"steps": 3, "n_target_classes": 2},
        "fab-t": {"steps": 3, "n_target_classes": 2},
        "square": {"queries": 5},
    }
    request = dict(
        op="autoattack",
        arch="mlp",
        arch_kwargs={"activation": "relu"},
        weights=str(tmp_path / "w.npz"),
        points=str(tmp_path / "p.npz"),
        eps=0.1,
        seed=0,
        batch_size=5,
        options=options,
    )
    with torch_reference.Worker(threads=1) as worker:
        reply = worker.request(**request)
        with pytest.raises(RuntimeError, match="no reference counterpart for option square.p_init"):
            worker.request(**{**request, "options": {"square": {"p_init": 0.5}}})
    accuracy = list(reply["accuracy"].values())
    assert list(reply["accuracy"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"] == list(reply["attack_seconds"])
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:]))  # cumulative
    assert reply["accuracy"]["clean"] == 1.0 and reply["attack_seconds"]["apgd-ce"] > 0
    assert len(reply["robust"]) == 12 and np.mean(reply["robust"]) == accuracy[-1]
    assert reply["seconds"] > 0 and all(t >= 0 for t in reply["attack_seconds"].values())
    assert sum(reply["attack_seconds"].values()) <= reply["seconds"]


def test_pgd_random_start_is_uniform_in_the_ball_and_seeded():
    model = torch_reference.ResNet18Cifar()
    x = torch.full((2, 3, 32, 32), 0.5)
    y = torch.tensor([1, 2])

    def start(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch_reference.pgd_linf(model, x, y, eps=EPS, step_size=STEP, steps=0, generator=gen) - x

    delta = start(0)
    assert delta.abs().max() <= EPS + 1e-7 and delta.abs().max() > 0.99 * EPS
    assert abs(delta.mean().item()) < 0.05 * EPS
    assert torch.equal(delta, start(0)) and not torch.equal(delta, start(1))


def test_train_step_is_nesterov_sgd_with_decay_on_conv_and_linear_weights_only():
    torch.manual_seed(0)
    model = torch_reference.ResNet18Cifar("smooth_relu")
    lr, momentum, wd = 0.1, 0.9, 0.1  # a large wd, so the decay term stands far above float noise
    step = torch_reference.make_train_step(model, 0, lr=lr, weight_decay=wd)
    x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))

    reference = copy.deepcopy(model).train()
    loss = F.cross_entropy(reference(x), y)
    decayed = ["conv1.weight", "layer2.0.shortcut.0.weight", "linear.weight"]
    names = decayed + ["bn1.weight", "layer2.0.shortcut.1.weight", "linear.bias", "act1.beta_raw"]
    ref_params = dict(reference.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, [ref_params[n] for n in names])))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    assert step(x, y) == pytest.approx(loss.item(), rel=1e-5)
    after = dict(model.named_parameters())
    for name in names:
        w0, grad = before[name], grads[name]
        # Nesterov from a zero buffer: buf = g, update = g + momentum * buf.
        with_decay = w0 - lr * (1 + momentum) * (grad + wd * w0)
        without_decay = w0 - lr * (1 + momentum) * grad
        expected, other = (with_decay, without_decay) if name in decayed else (without_decay, with_decay)
        assert (after[name] - expected).abs().max() < 1e-6, name
        assert (after[name] - other).abs().max() > 1e-4, name


def test_bfloat16_pgd_step_trains():
    torch.manual_seed(0)
    model = torch_reference.ResNet18Cifar("silu")
    step = torch_reference.make_train_step(model, 1, precision="bfloat16")
    before = model.conv1.weight.detach().clone()
    loss = step(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    assert np.isfinite(loss) and not torch.equal(before, model.conv1.weight)
    assert model.conv1.weight.dtype == torch.float32  # autocast, not a bf16 model


def test_certify_sampler_is_cohens_loop():
    torch.manual_seed(0)
    model = torch_reference.ResNet18Cifar().eval()
    x = torch.rand(3, 32, 32)
    sizes = []
    model.register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].shape[0]))
    counts = torch_reference.make_certify_sampler(model, sigma=0.25, batch_size=10)(x, 25)
    assert sizes == [10, 10, 5] and counts.shape == (10,) and counts.sum() == 25

    clean = int(model(x[None]).argmax())
    counts = torch_reference.make_certify_sampler(model, sigma=0.0, batch_size=10)(x, 25)
    assert counts[clean] == 25  # no noise: every copy is the clean prediction


def test_importing_the_module_does_not_import_torch():
    code = "import sys, torch_reference; assert 'torch' not in sys.modules; torch_reference.Worker"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "benchmarks")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_worker_protocol_round_trip():
    with torch_reference.Worker(threads=1) as worker:
        train = {"kind": "train", "activation": "relu", "k": 1, "batch": 2}
        assert worker.request(op="build", id="train", **train)["params"] == 11173962
        assert worker.request(op="build", id="certify", kind="certify", batch=10, num=20)["ok"]
        for name in ("train", "certify"):
            first = worker.request(op="time", id=name, n=2)
            assert len(first["times"]) == 2 and min(first["times"]) > 0
            assert first["first"] == first["times"][0]
            assert worker.request(op="time", id=name, n=1)["first"] == first["first"]
        with pytest.raises(RuntimeError, match="no-such-id"):
            worker.request(op="time", id="no-such-id", n=1)
        with pytest.raises(RuntimeError, match="unknown keys"):
            worker.request(op="build", id="bad", lr=0.1, **train)
        assert worker.request(op="rss")["max_rss_mb"] > 0  # still serving after errors
        assert worker.request(op="quit") == {"ok": True}
        assert worker._proc.wait(timeout=30) == 0


def _digits_cnn_pair(activation, seed=0):
    """digits_cnn with random BN statistics and its torch port."""
    keras.utils.set_random_seed(seed)
    model = randomize_statistics(
        models.build_model("digits_cnn", activation=activation), np.random.default_rng(seed + 1)
    )
    torch_model = torch_reference.DigitsCNN(activation)
    torch_reference.load_keras_weights(torch_model, model)
    return model, torch_model


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_trades_objective_is_the_released_trades_loss(activation, monkeypatch):
    """Our TRADES step against yaodongyu/TRADES' `trades_loss` on the same network and start: the attack (BN in
    inference mode), the loss (both forwards in training mode, gradient through p(x)) and its weight gradient.

    The released start is x + 0.001 N(0, 1), where the KL's input gradient is ~1e-10 and float32 rounding flips
    the sign of ~1 % of its entries (either framework against float64); the test starts at 0.05 N(0, 1) (0.01 was
    not enough on an AMD EPYC without AVX-512), where the first step is well defined, so the two attacks must
    agree pixel for pixel."""
    from sat_tf.attacks import base
    from sat_tf.attacks import trades as trades_attack
    from sat_tf.training import objectives
    from sat_tf.training.objectives import trades as trades_objective

    assert trades_attack.START_SCALE == 0.001  # the released code's start
    start_scale = 0.05
    monkeypatch.setattr(trades_attack, "START_SCALE", start_scale)

    model, torch_model = _digits_cnn_pair(activation)
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(32, 8, 8, 1)).astype(np.float32)
    y = np.arange(32) % 10
    eps, step, steps, beta = 0.1, 0.02, 10, 6.0
    objective = objectives.TradesObjective(model, eps=eps, step_size=step, steps=steps, beta=beta)
    seed = tf.constant([7, 8], tf.int64)
    _, x_adv, _ = objective.training_batch(lambda z: model(z, training=False), x, y, seed=seed, step=0)
    start_seed = base.fold_seed(seed, trades_objective._ATTACK_SEED)
    start = x + start_scale * base.random_normal(x.shape, start_seed).numpy()

    y_t = torch.from_numpy(y)
    _, their_adv = torch_reference.trades_loss(
        torch_model,
        to_torch(x),
        y_t,
        start=to_torch(start),
        step_size=step,
        epsilon=eps,
        perturb_steps=steps,
        beta=beta,
    )
    their_adv = their_adv.permute(0, 2, 3, 1).numpy()
    # A gradient entry near float32's noise level can flip a pixel's sign step (the two frameworks compute the
    # activations' derivatives differently), and later steps carry it on in that example: < 1 % of the pixels
    # differ, and the KL each attack reaches is the same to a few percent (it is ~4e-7 on this random network,
    # where one flipped pixel moves it by ~1 %: 1.35 % for SiLU on an AMD EPYC without AVX-512, 2026-12-05).
    assert np.mean(np.abs(their_adv - x_adv.numpy()) > 1e-6) < 0.01
    clean = model(x, training=False)
    reached = [float(tf.reduce_mean(objectives.trades_kl(clean, model(z, training=False)))) for z in (x_adv, their_adv)]
    assert reached[0] == pytest.approx(reached[1], rel=0.05) and reached[0] > 0

    # The loss and its gradient, both sides on our x' (so one sign flip above cannot spread).
    torch_model.zero_grad()
    their_loss, _ = torch_reference.trades_loss(
        torch_model,
        to_torch(x),
        y_t,
        start=to_torch(x_adv.numpy()),
        step_size=step,
        epsilon=eps,
        perturb_steps=0,
        beta=beta,
    )
    their_loss.backward()
    with tf.GradientTape() as tape:
        per_example, _, _ = objective.loss(
            lambda z: model(z, training=True),
            (x, x_adv, y),
            list(model.trainable_variables),
            num_classes=10,
            label_smoothing=0.0,
        )
        loss = tf.reduce_mean(per_example)
    grads = dict(zip((id(v) for v in model.trainable_variables), tape.gradient(loss, model.trainable_variables)))
    np.testing.assert_allclose(float(loss), their_loss.item(), rtol=1e-5)
    # Our gradients, laid out as Keras layer weights, ported into a twin, compared parameter by parameter.
    layer_grads = {
        layer.name: [grads[id(w)].numpy() if id(w) in grads else w.numpy() for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }
    holder = torch_reference.DigitsCNN(activation)
    torch_reference.load_keras_weights(holder, layer_grads)
    for (name, theirs), (_, ours) in zip(torch_model.named_parameters(), holder.named_parameters()):
        scale = float(ours.abs().max())
        assert float((theirs.grad - ours).abs().max()) <= 1e-4 * scale + 1e-7, name
