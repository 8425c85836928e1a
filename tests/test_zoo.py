"""TF1 model-zoo conversion (sat_tf.zoo) against an independent reference.

The checkpoints are written here from a name/shape table this file defines
(the SAT tensorpack / TF1-EfficientNet names), with random values, and the
reference forward passes are raw `tf.nn` code over those arrays, so neither
depends on sat_tf's model code or on its name mapping.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_launcher

from sat_tf import models, zoo

SIZE, CLASSES = 32, 10
EMA = "/ExponentialMovingAverage"


# === Checkpoint tables (names and shapes as the SAT code writes them) ===


def resnet_table(depth, groups=1, width=64, smooth=False):
    block_type, counts = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}[depth]
    table = {}

    def conv(scope, k, cin, cout, g=1):
        table[f"{scope}/W"] = (k, k, cin // g, cout)
        for v in ("gamma", "beta", "mean/EMA", "variance/EMA"):
            table[f"{scope}/bn/{v}"] = (cout,)

    def act(scope):
        if smooth:
            table[f"{scope}/smoothrelu_beta"] = (1,)

    conv("conv0", 7, 3, 64)
    act("conv0")
    cin = 64
    for g, (filters, n) in enumerate(zip((64, 128, 256, 512), counts)):
        for b in range(n):
            s = f"group{g}/block{b}"
            cout = 4 * filters if block_type == "bottleneck" else filters
            if cin != cout:  # tensorpack resnet_shortcut
                conv(f"{s}/convshortcut", 1, cin, cout)
            if block_type == "bottleneck":
                inner = filters * (width * groups // 64)
                conv(f"{s}/conv1", 1, cin, inner)
                conv(f"{s}/conv2", 3, inner, inner, groups)
                conv(f"{s}/conv3", 1, inner, cout)
                act(f"{s}/conv2")
            else:
                conv(f"{s}/conv1", 3, cin, cout)
                conv(f"{s}/conv2", 3, cout, cout)
            act(f"{s}/conv1")
            act(s)
            cin = cout
    table["linear/W"] = (cin, CLASSES)
    table["linear/b"] = (CLASSES,)
    return table


# B0: (repeats, kernel, stride, expand, in, out); stem 32, head 1280.
B0 = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def b0_blocks():
    for r, k, s, e, cin, cout in B0:
        for j in range(r):
            yield (k, s, e, cin, cout) if j == 0 else (k, 1, e, cout, cout)


def efficientnet_table(scope="efficientnet-b0"):
    table = {}

    def bn(name, c):
        for v in ("gamma", "beta", "moving_mean", "moving_variance"):
            table[f"{scope}/{name}/{v}"] = (1, 1, 1, 1, c)  # SAT's 5-D BN params

    table[f"{scope}/stem/conv2d/kernel"] = (3, 3, 3, 32)
    bn("stem/tpu_batch_normalization", 32)
    for i, (k, s, e, cin, cout) in enumerate(b0_blocks()):
        p, c, n = f"blocks_{i}", cin * e, 0
        if e != 1:
            table[f"{scope}/{p}/conv2d/kernel"] = (1, 1, cin, c)
            bn(f"{p}/tpu_batch_normalization", c)
            n = 1
        table[f"{scope}/{p}/depthwise_conv2d/depthwise_kernel"] = (k, k, c, 1)
        bn(f"{p}/tpu_batch_normalization" + (f"_{n}" if n else ""), c)
        r = max(1, int(cin * 0.25))
        table[f"{scope}/{p}/se/conv2d/kernel"] = (1, 1, c, r)
        table[f"{scope}/{p}/se/conv2d/bias"] = (r,)
        table[f"{scope}/{p}/se/conv2d_1/kernel"] = (1, 1, r, c)
        table[f"{scope}/{p}/se/conv2d_1/bias"] = (c,)
        table[f"{scope}/{p}/conv2d" + ("_1" if n else "") + "/kernel"] = (1, 1, c, cout)
        bn(f"{p}/tpu_batch_normalization_{n + 1}", cout)
    table[f"{scope}/head/conv2d/kernel"] = (1, 1, 320, 1280)
    bn("head/tpu_batch_normalization", 1280)
    table[f"{scope}/head/dense/kernel"] = (1280, CLASSES)
    table[f"{scope}/head/dense/bias"] = (CLASSES,)
    return table


def random_values(table, seed):
    """Random arrays that make every mapping mistake visible (BN stats too)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in table.items():
        leaf = name.rsplit("/", 1)[-1]
        if "gamma" in name:
            v = rng.uniform(0.5, 1.2, shape)
        elif "variance" in name:
            v = rng.uniform(0.5, 2.0, shape)
        elif leaf in ("beta", "moving_mean", "EMA", "b", "bias"):
            v = rng.normal(0.0, 0.2, shape)
        elif leaf == "smoothrelu_beta":
            v = rng.uniform(1.0, 4.0, shape) * rng.choice([-1, 1])  # beta = w**2
        elif "dense" in name or name.startswith("linear"):
            v = rng.normal(0.0, 0.05, shape)
        else:  # conv kernels, He-style on fan-in
            fan_in = np.prod(shape[:2]) * (1 if "depthwise" in name else shape[2])
            v = rng.normal(0.0, np.sqrt(1.5 / fan_in), shape)
        out[name] = v.astype(np.float32)
    return out


def save(path, arrays):
    names = sorted(arrays)
    tf.raw_ops.SaveV2(
        prefix=str(path),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[n]) for n in names],
    )
    return str(path)


# === Independent reference forward passes (raw tf.nn, NHWC) ===


_CALIBRATING = []  # holds an rng while `calibrate` runs


def _bn(x, p, scope, eps, names=("gamma", "beta", "mean/EMA", "variance/EMA")):
    if _CALIBRATING:  # data-dependent moving stats (perturbed), so no depth washes the input out
        rng, (mean_name, var_name) = _CALIBRATING[0], (f"{scope}/{n}" for n in names[2:])
        m, v = (t.numpy() for t in tf.nn.moments(x, axes=[0, 1, 2]))
        shape = p[mean_name].shape
        p[mean_name] = (m + rng.normal(0.0, 0.2, m.shape) * np.sqrt(v)).reshape(shape).astype(np.float32)
        v = np.maximum(v, 0.25 * np.median(v)) + 1e-3  # few pixels late in the net: no tiny variances
        p[var_name] = (v * rng.uniform(0.7, 1.4, v.shape)).reshape(shape).astype(np.float32)
    g, b, m, v = (np.reshape(p[f"{scope}/{n}"], [-1]) for n in names)
    return (x - m) / tf.sqrt(v + eps) * g + b


def calibrate(params, forward, seed):
    """Sets every BN's moving stats from a batch run through `forward` (in place)."""
    _CALIBRATING.append(np.random.default_rng(seed))
    try:
        forward(params, images(seed + 100, n=64))
    finally:
        _CALIBRATING.clear()
    return params


def _act(x, kind, p, scope):
    if kind == "silu":
        return x * tf.sigmoid(x)
    if kind == "relu":
        return tf.nn.relu(x)
    beta = float(p[f"{scope}/smoothrelu_beta"][0]) ** 2
    return tf.nn.relu(x - tf.math.log(beta * tf.abs(x) + 1.0) / beta)


def _conv(x, w, stride=1, groups=1):
    k = w.shape[0]
    padding = "SAME"
    if stride > 1 and k > 1:  # SAT's fixed padding
        b = (k - 1) // 2
        x = tf.pad(x, [[0, 0], [b, k - 1 - b], [b, k - 1 - b], [0, 0]])
        padding = "VALID"
    xs, ws = tf.split(x, groups, axis=-1), np.split(w, groups, axis=-1)  # contiguous groups
    return tf.concat([tf.nn.conv2d(a, c, stride, padding) for a, c in zip(xs, ws)], axis=-1)


def reference_resnet(p, images, depth, act, groups=1):
    """tensorpack SAT ResNet, inference mode (BN eps 1e-5, moving stats)."""
    counts = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]

    def conv_bn(x, scope, stride=1, groups=1):
        return _bn(_conv(x, p[f"{scope}/W"], stride, groups), p, f"{scope}/bn", 1e-5)

    x = tf.constant(images) * 2.0 - 1.0
    x = _act(conv_bn(x, "conv0", 2), act, p, "conv0")
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for g, n in enumerate(counts):
        for b in range(n):
            s, stride = f"group{g}/block{b}", (2 if g > 0 and b == 0 else 1)
            short = conv_bn(x, f"{s}/convshortcut", stride) if f"{s}/convshortcut/W" in p else x
            if depth == 18:
                y = _act(conv_bn(x, f"{s}/conv1", stride), act, p, f"{s}/conv1")
                y = conv_bn(y, f"{s}/conv2")
            else:
                y = _act(conv_bn(x, f"{s}/conv1"), act, p, f"{s}/conv1")
                y = _act(conv_bn(y, f"{s}/conv2", stride, groups), act, p, f"{s}/conv2")
                y = conv_bn(y, f"{s}/conv3")
            x = _act(y + short, act, p, s)
    x = tf.reduce_mean(x, axis=[1, 2])
    return (x @ p["linear/W"] + p["linear/b"]).numpy()


def reference_efficientnet(p, images, scope="efficientnet-b0", eps=1e-5):
    bn_names = ("gamma", "beta", "moving_mean", "moving_variance")

    def bn(x, name):
        return _bn(x, p, f"{scope}/{name}", eps, bn_names)

    def silu(x):
        return x * tf.sigmoid(x)

    x = tf.constant(images) * 2.0 - 1.0
    x = silu(bn(tf.nn.conv2d(x, p[f"{scope}/stem/conv2d/kernel"], 2, "SAME"), "stem/tpu_batch_normalization"))
    for i, (k, s, e, cin, cout) in enumerate(b0_blocks()):
        q, inputs, n = f"{scope}/blocks_{i}", x, 0
        if e != 1:
            x = tf.nn.conv2d(x, p[f"{q}/conv2d/kernel"], 1, "SAME")
            x = silu(bn(x, f"blocks_{i}/tpu_batch_normalization"))
            n = 1
        x = tf.nn.depthwise_conv2d(x, p[f"{q}/depthwise_conv2d/depthwise_kernel"], [1, s, s, 1], "SAME")
        x = silu(bn(x, f"blocks_{i}/tpu_batch_normalization" + (f"_{n}" if n else "")))
        se = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        se = silu(tf.nn.conv2d(se, p[f"{q}/se/conv2d/kernel"], 1, "SAME") + p[f"{q}/se/conv2d/bias"])
        se = tf.nn.conv2d(se, p[f"{q}/se/conv2d_1/kernel"], 1, "SAME") + p[f"{q}/se/conv2d_1/bias"]
        x = tf.sigmoid(se) * x
        x = tf.nn.conv2d(x, p[f"{q}/conv2d" + ("_1" if n else "") + "/kernel"], 1, "SAME")
        x = bn(x, f"blocks_{i}/tpu_batch_normalization_{n + 1}")
        if s == 1 and cin == cout:
            x = x + inputs
    x = silu(bn(tf.nn.conv2d(x, p[f"{scope}/head/conv2d/kernel"], 1, "SAME"), "head/tpu_batch_normalization"))
    x = tf.reduce_mean(x, axis=[1, 2])
    return (x @ p[f"{scope}/head/dense/kernel"] + p[f"{scope}/head/dense/bias"]).numpy()


def resnet_params(depth, act, seed, groups=1, width=64):
    table = resnet_table(depth, groups, width, smooth=act == "smooth")
    forward = lambda p, x: reference_resnet(p, x, depth, act, groups)  # noqa: E731
    return calibrate(random_values(table, seed), forward, seed)


def efficientnet_params(seed):
    return calibrate(random_values(efficientnet_table(), seed), reference_efficientnet, seed)


def assert_logits_close(ours, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.ptp(ref, axis=0).max() > 0.05 * scale, "reference logits barely depend on the input"
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)


def images(seed=0, n=3):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, SIZE, SIZE, 3)).astype(np.float32)


def build(name, **kwargs):
    return models.build_model(name, input_shape=(SIZE, SIZE, 3), num_classes=CLASSES, **kwargs)


def logits(model, x):
    return model(x, training=False).numpy()


# === Fixtures ===


@pytest.fixture(scope="module")
def res50_smooth(tmp_path_factory):
    params = resnet_params(50, "smooth", seed=1)
    extra = {
        "global_step": np.array(1234, np.int64),
        "learning_rate": np.array(0.1, np.float32),
        "conv0/W/Momentum": np.zeros((7, 7, 3, 64), np.float32),
        "group0/block0/conv1/bn/gamma/Momentum": np.zeros((64,), np.float32),
        "EMA/train-error-top1/EMA": np.array(0.5, np.float32),
    }
    path = save(tmp_path_factory.mktemp("res50") / "Res50-smoothrelu", {**params, **extra})
    return params, path


@pytest.fixture(scope="module")
def effnet(tmp_path_factory):
    raw = efficientnet_params(seed=2)
    rng = np.random.default_rng(3)
    shadow = {}
    for name, value in raw.items():
        if name.endswith("head/dense/bias"):
            continue  # one weight without a shadow
        noise = rng.normal(0.0, 0.1, value.shape).astype(np.float32)
        shadow[name] = value * np.exp(noise) if "variance" in name else value + noise * np.std(value)
    arrays = {**raw, **{n + EMA: v for n, v in shadow.items()}, "global_step": np.array(7, np.int64)}
    path = save(tmp_path_factory.mktemp("effnet") / "efficientnet-b0", arrays)
    return raw, shadow, path


# === ResNet ===


def test_resnet50_smoothrelu_matches_reference_and_reports(res50_smooth):
    params, path = res50_smooth
    model = build("resnet50", activation="smooth_relu")
    report = zoo.load_tf1_checkpoint(model, path)
    assert report.ok and report.family == "resnet"
    assert len(report.loaded) == len(model.weights) == len(params)
    assert report.unused_in_checkpoint == []
    assert set(report.ignored_training_state) == {
        "global_step",
        "learning_rate",
        "conv0/W/Momentum",
        "group0/block0/conv1/bn/gamma/Momentum",
        "EMA/train-error-top1/EMA",
    }
    x = images()  # ours takes RGB; the released ResNet BGR (the default channel order)
    assert_logits_close(logits(model, x), reference_resnet(params, x[..., ::-1], 50, "smooth"))
    assert f"loaded {len(params)} weights" in report.summary() and report.channel_order == "bgr"


def test_resnet_silu_bgr_and_resnext(tmp_path):
    x = images(1)
    for name, depth, kwargs in (("resnet50", 50, {}), ("resnext50_32x4d", 50, {"groups": 32, "width": 4})):
        params = resnet_params(depth, "silu", seed=4, **kwargs)
        path = save(tmp_path / name, params)
        model = build(name, activation="silu")
        zoo.load_tf1_checkpoint(model, path)  # BGR by default: RGB in ours == BGR in the reference
        groups = kwargs.get("groups", 1)
        assert_logits_close(logits(model, x), reference_resnet(params, x[..., ::-1], depth, "silu", groups))
        if name == "resnet50":  # an RGB checkpoint: the same input on both sides
            zoo.load_tf1_checkpoint(model, path, channel_order="rgb")
            assert_logits_close(logits(model, x), reference_resnet(params, x, depth, "silu"))
        info = zoo.inspect_checkpoint(path)
        assert (info["depth"], info["groups"], info["num_classes"]) == (50, groups, CLASSES)
        assert info["bottleneck_width"] == kwargs.get("width", 64)
        assert info["model"] == name and info["activation_hint"] is None


def test_resnet18_basic_blocks(tmp_path):
    params = resnet_params(18, "relu", seed=5)
    path = save(tmp_path / "r18", params)
    model = build("resnet18", activation="relu")
    zoo.load_tf1_checkpoint(model, path)
    x = images(2)
    assert_logits_close(logits(model, x), reference_resnet(params, x[..., ::-1], 18, "relu"))
    info = zoo.inspect_checkpoint(str(tmp_path))  # a directory with one *.index
    assert (info["depth"], info["block_type"], info["model"]) == (18, "basic", "resnet18")


def test_strict_errors_and_unused_tensors(tmp_path, res50_smooth):
    params, _ = res50_smooth
    broken = {k: v for k, v in params.items() if k != "group3/block1/conv2/bn/gamma"}
    broken["group9/extra/W"] = np.zeros((2,), np.float32)
    broken["linear/b"] = np.zeros((CLASSES + 1,), np.float32)
    path = save(tmp_path / "broken", broken)
    model = build("resnet50", activation="smooth_relu")
    before = [w.numpy().copy() for w in model.weights]
    needle = r"group3_block1_conv2_bn/gamma <- group3/block1/conv2/bn/gamma"
    with pytest.raises(ValueError, match=needle) as err:
        zoo.load_tf1_checkpoint(model, path)
    assert "\n" not in str(err.value) and "linear/bias <- linear/b: [11] vs [10]" in str(err.value)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))  # nothing assigned
    report = zoo.load_tf1_checkpoint(model, path, strict=False)
    assert report.unused_in_checkpoint == ["group9/extra/W"]
    assert len(report.missing_in_checkpoint) == 1 and len(report.shape_mismatches) == 1
    assert "missing in checkpoint (1)" in report.summary()
    relu_model = build("resnet50", activation="relu")  # smoothrelu_beta tensors left over
    report = zoo.load_tf1_checkpoint(relu_model, res50_smooth[1])
    assert len(report.unused_in_checkpoint) == 49
    assert all(n.endswith("smoothrelu_beta") for n in report.unused_in_checkpoint)


def test_inspect_resnet_smoothrelu(res50_smooth):
    info = zoo.inspect_checkpoint(res50_smooth[1])
    assert info["family"] == "resnet" and info["depth"] == 50 and info["blocks_per_group"] == [3, 4, 6, 3]
    assert info["activation_hint"] == "smooth_relu" and not info["has_ema"]
    assert info["model"] == "resnet50" and info["model_kwargs"]["activation"] == "smooth_relu"


def test_resnet_write_load_round_trip(tmp_path, res50_smooth):
    source = build("resnet50", activation="smooth_relu")
    zoo.load_tf1_checkpoint(source, res50_smooth[1])
    for order in (None, "rgb", "bgr"):  # None: the family's, on both sides
        path = zoo.write_tf1_checkpoint(source, str(tmp_path / f"rt{order}"), family="resnet", channel_order=order)
        reader = tf.train.load_checkpoint(path)
        assert reader.get_variable_to_shape_map()["conv0/smoothrelu_beta"] == [1]
        stem = source.get_layer("conv0").kernel.numpy()
        expected = stem if order == "rgb" else stem[:, :, ::-1, :]  # a ResNet checkpoint expects BGR by default
        np.testing.assert_array_equal(reader.get_tensor("conv0/W"), expected)
        target = build("resnet50", activation="smooth_relu")
        report = zoo.load_tf1_checkpoint(target, path, channel_order=order)
        assert report.ok and not report.unused_in_checkpoint
        for a, b in zip(source.weights, target.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# === EfficientNet ===


def test_efficientnet_matches_reference_raw_and_ema(effnet):
    raw, shadow, path = effnet
    x = images(3)
    model = build("efficientnet_b0", bn_epsilon=1e-5)
    report = zoo.load_tf1_checkpoint(model, path)
    assert report.ok and report.family == "efficientnet" and not report.unused_in_checkpoint
    assert len(report.loaded) == len(model.weights) == len(raw)
    assert "global_step" in report.ignored_training_state
    raw_logits = logits(model, x)
    assert_logits_close(raw_logits, reference_efficientnet(raw, x))

    report = zoo.load_tf1_checkpoint(model, path, use_ema=True)
    assert report.ema_used and report.ema_missing == ["head_dense/bias"]
    ema_logits = logits(model, x)
    assert_logits_close(ema_logits, reference_efficientnet({**raw, **shadow}, x))
    assert np.abs(ema_logits - raw_logits).max() > 1e-2

    zoo.load_tf1_checkpoint(model, path, channel_order="bgr")
    assert_logits_close(logits(model, x), reference_efficientnet(raw, x[..., ::-1]))


def test_inspect_and_round_trip_efficientnet(effnet, tmp_path):
    info = zoo.inspect_checkpoint(effnet[2])
    assert (info["family"], info["variant"], info["model"]) == ("efficientnet", "b0", "efficientnet_b0")
    assert info["num_classes"] == CLASSES and info["num_blocks"] == 16 and info["has_ema"] and info["bn_5d"]
    source = build("efficientnet_b0")
    zoo.load_tf1_checkpoint(source, effnet[2], use_ema=True)
    path = zoo.write_tf1_checkpoint(source, str(tmp_path / "b0"), family="efficientnet", ema=True)
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    assert shapes["efficientnet-b0/stem/tpu_batch_normalization/gamma"] == [1, 1, 1, 1, 32]
    assert set(shapes) == set(effnet[0]) | {n + EMA for n in effnet[0]}
    target = build("efficientnet_b0")
    assert zoo.load_tf1_checkpoint(target, path, use_ema=True).ema_missing == []
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_default_channel_order_follows_the_released_code(res50_smooth, effnet):
    # SAT's ResNet/main.py: "Our model expects BGR images instead of RGB"; the EfficientNet TPU pipeline is RGB.
    assert {name: spec.channel_order for name, spec in zoo.FAMILIES.items()} == {"resnet": "bgr", "efficientnet": "rgb"}
    assert all(e["channel_order"] == zoo.FAMILIES[e["family"]].channel_order for e in zoo.ZOO.values())
    x = images(5)
    default, bgr = build("resnet50", activation="smooth_relu"), build("resnet50", activation="smooth_relu")
    assert zoo.load_tf1_checkpoint(default, res50_smooth[1]).channel_order == "bgr"
    zoo.load_tf1_checkpoint(bgr, res50_smooth[1], channel_order="bgr")
    np.testing.assert_array_equal(logits(default, x), logits(bgr, x))
    assert zoo.load_tf1_checkpoint(build("efficientnet_b0"), effnet[2]).channel_order == "rgb"
    with pytest.raises(ValueError, match="channel_order='gbr'"):
        zoo.load_tf1_checkpoint(default, res50_smooth[1], channel_order="gbr")


def test_zoo_table():
    from sat_tf.zoo import presets

    assert zoo.ZOO is presets.ZOO and zoo.zoo_entry is presets.zoo_entry
    assert zoo.ZOO["Res50-silu"]["published"] == {"clean": 69.7, "pgd10": 43.0, "pgd20": 42.2, "pgd50": 41.9}
    assert zoo.zoo_entry("efficientnet-bL1-enhanced")["use_ema"] is True
    assert zoo.zoo_entry("ResX50-silu-32x8d")["model_kwargs"] == {"groups": 32, "bottleneck_width": 8}
    registered = set(models.list_models())
    assert all(entry["model"] in registered for entry in zoo.ZOO.values())
    with pytest.raises(ValueError, match="Unknown zoo name"):
        zoo.zoo_entry("Res51-silu")


# === Launcher ===


def run_convert(*flags):
    return run_launcher("convert_checkpoint.py", *flags, timeout=300, check=False)


def test_launcher_converts_and_reloads(tmp_path):
    import keras

    params = resnet_params(18, "silu", seed=6)
    path = save(tmp_path / "r18", params)
    out = tmp_path / "r18.keras"
    proc = run_convert(f"--checkpoint={path}", "--activation=silu", f"--image_size={SIZE}", f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"loaded {len(params)} weights" in proc.stdout and str(out) in proc.stdout
    model = keras.saving.load_model(str(out), safe_mode=True)
    x = images(4)
    assert_logits_close(logits(model, x), reference_resnet(params, x[..., ::-1], 18, "silu"))  # BGR default

    missing = tmp_path / "nope" / "Res50-silu"
    proc = run_convert(f"--checkpoint={missing}", "--zoo_name=Res50-silu")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and str(missing) in last and "Traceback" not in proc.stderr
