"""RobustBench checkpoints -> Keras (`sat_tf.zoo.robustbench`), offline, against independent PyTorch twins.

benchmarks/torch_robustbench.py writes RobustBench's DMWideResNet, timm's ConvNeXt and the ConvStem again from
their reference sources. Small variants with every weight and BatchNorm statistic random are saved as state
dicts (plain, in RobustBench's `{"state_dict": {"module." ...}}` wrapper, wrapped by `normalize_model`, and as
.safetensors), converted, and must give the twin's eval-mode logits to <= 1e-4. AutoAttack on a converted model
is compared with the reference AutoAttack (pyautoattack) on its twin; the converted model exports to a
SavedModel. Real checkpoints and CIFAR-10/ImageNet are not on this machine: the presets' numbers are the
published ones, not measured here.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch", reason="PyTorch cross-check: pip install -e '.[crosscheck]'")

from sat_tf import models  # noqa: E402
from sat_tf.models import convnext as convnext_lib  # noqa: E402
from sat_tf.models import dm_wide_resnet as dm_lib  # noqa: E402
from sat_tf.zoo import robustbench as rb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import torch_robustbench as trb  # noqa: E402

TOLERANCE = 1e-4  # max |logit difference|, float32 on both sides
DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)
CONVSTEM_2 = ((4, 2), (8, 2))  # ConvBlock1's shape (two stride-2 convs), small
CONVSTEM_3 = ((4, 2), (6, 2), (8, 1))  # ConvBlock3's shape (stride 2, 2, 1), small


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def twin_logits(twin, x):
    with torch.no_grad():
        return twin(nchw(x)).numpy()


def points(shape, count=4, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, *shape)).astype(np.float32)


# name -> (twin factory, Keras builder, input shape)
CASES = {
    "dm_wrn10_2": (
        lambda: trb.dm_wide_resnet(depth=10, width=2),
        lambda s: models.build_model("dm_wide_resnet28_10", depth=10, width=2, input_shape=s),
        (16, 16, 3),
    ),
    "dm_wrn16_1_nonsquare": (
        lambda: trb.dm_wide_resnet(depth=16, width=1, num_classes=5),
        lambda s: models.build_model("dm_wide_resnet28_10", depth=16, width=1, num_classes=5, input_shape=s),
        (20, 12, 3),
    ),
    "dm_wrn10_1_cifar100_padding": (
        lambda: trb.dm_wide_resnet(
            depth=10,
            width=1,
            num_classes=100,
            mean=dm_lib.DM_CIFAR100["mean"],
            std=dm_lib.DM_CIFAR100["std"],
            padding=2,
        ),
        lambda s: models.build_model(
            "dm_wide_resnet28_10",
            depth=10,
            width=1,
            num_classes=100,
            padding=2,
            preprocessing={k: list(v) for k, v in dm_lib.DM_CIFAR100.items()},
            input_shape=s,
        ),
        (12, 12, 3),
    ),
    "convnext_patch_normalized": (
        lambda: trb.normalize_model(trb.convnext(DEPTHS, DIMS, num_classes=7)),
        lambda s: models.build_model("convnext_large", depths=DEPTHS, dims=DIMS, num_classes=7, input_shape=s),
        (32, 32, 3),
    ),
    "convnext_convstem_2": (
        lambda: trb.convnext_convstem(DEPTHS, DIMS, CONVSTEM_2, num_classes=7),
        lambda s: models.build_model(
            "convnext_tiny",
            stem="convstem",
            depths=DEPTHS,
            dims=DIMS,
            convstem_convs=CONVSTEM_2,
            num_classes=7,
            preprocessing=None,
            input_shape=s,
        ),
        (32, 32, 3),
    ),
    "convnext_convstem_3": (
        lambda: trb.convnext_convstem(DEPTHS, DIMS, CONVSTEM_3, num_classes=7),
        lambda s: models.build_model(
            "convnext_base",
            stem="convstem",
            depths=DEPTHS,
            dims=DIMS,
            convstem_convs=CONVSTEM_3,
            num_classes=7,
            preprocessing=None,
            input_shape=s,
        ),
        (36, 36, 3),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    make_twin, make_keras, shape = CASES[request.param]
    torch.manual_seed(0)
    twin = trb.randomize_(make_twin(), seed=1).eval()
    return request.param, twin, make_keras, shape


def test_converted_logits_equal_the_twins(pair):
    name, twin, make_keras, shape = pair
    model = make_keras(shape)
    report = rb.convert_state_dict(twin.state_dict(), model)
    x = points(shape)
    ours, theirs = model(x, training=False).numpy(), twin_logits(twin, x)
    diff = float(np.abs(ours - theirs).max())
    print(f"{name}: max |logit diff| {diff:.2e} (logits up to {np.abs(theirs).max():.2f})")
    assert diff <= TOLERANCE
    assert np.std(theirs) > 0.1  # logits that differ between classes and points: a real comparison
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == sum(p.numel() for p in twin.parameters())
    buffers = ("mean", "std", "normalize.mean", "normalize.std")
    tensors = [k for k in twin.state_dict() if not k.endswith("num_batches_tracked") and k not in buffers]
    assert len(report.loaded) == len(tensors) == len(model.weights)


def test_checkpoint_files_and_robustbench_wrappers(tmp_path):
    """A .pt of RobustBench's wrapped form, a plain .pt and a .safetensors all convert to the same model."""
    twin = trb.randomize_(trb.dm_wide_resnet(depth=10, width=1), seed=4)
    state = twin.state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    torch.save(state, tmp_path / "plain.pth")
    rb.write_safetensors(tmp_path / "w.safetensors", {k: v.numpy() for k, v in state.items()})
    x = points((16, 16, 3))
    expected = twin_logits(twin, x)
    for path in ("wrapped.pt", "plain.pth", "w.safetensors"):
        model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
        rb.convert_state_dict(str(tmp_path / path), model)
        assert np.abs(model(x, training=False).numpy() - expected).max() <= TOLERANCE, path
    arrays = rb.read_safetensors(tmp_path / "w.safetensors")
    assert arrays["layer.0.block.0.conv_0.weight"].dtype == np.float32
    assert arrays["layer.0.block.0.batchnorm_0.num_batches_tracked"].dtype == np.int64


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {"init_conv.weight": torch.zeros(16, 3, 3, 3)}, "x": Evil()}, tmp_path / "evil.pt")
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="weights_only=True"):
        rb.convert_state_dict(str(tmp_path / "evil.pt"), model)
    assert not marker.exists()


def test_unknown_missing_and_mismatched_keys_are_one_error_and_nothing_is_assigned():
    twin = trb.randomize_(trb.dm_wide_resnet(depth=10, width=1), seed=5)
    state = {k: v.clone() for k, v in twin.state_dict().items()}
    del state["layer.1.block.0.conv_1.weight"]
    state["layer.9.block.0.conv_0.weight"] = torch.zeros(3, 3, 3, 3)
    state["logits.weight"] = torch.zeros(10, 7)
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError) as err:
        rb.convert_state_dict(state, model)
    message = str(err.value)
    assert "\n" not in message
    assert "1 checkpoint tensors with no model weight: layer.9.block.0.conv_0.weight" in message
    assert "1 model weights missing from the checkpoint: layer_1_block_0_conv_1/kernel" in message
    assert "1 shape mismatches: logits.weight [10, 7] -> logits/kernel [64, 10]" in message
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_normalisation_buffers_must_match_the_model():
    twin = trb.dm_wide_resnet(depth=10, width=1, mean=dm_lib.DM_CIFAR100["mean"], std=dm_lib.DM_CIFAR100["std"])
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"mean=\[0.5071, 0.4865, 0.4409\] but the model's preprocessing has mean"):
        rb.convert_state_dict(twin.state_dict(), model)
    liu = trb.normalize_model(trb.convnext(DEPTHS, DIMS, num_classes=7))
    bare = models.build_model(
        "convnext_tiny", depths=DEPTHS, dims=DIMS, num_classes=7, input_shape=(32, 32, 3), preprocessing=None
    )
    with pytest.raises(ValueError, match="the model has no preprocessing layer"):
        rb.convert_state_dict(liu.state_dict(), bare)


def test_bad_files_name_the_file(tmp_path):
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        rb.convert_state_dict(str(tmp_path / "absent.pt"), model)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .safetensors file or a torch file"):
        rb.convert_state_dict(str(tmp_path / "w.npz"), model)
    (tmp_path / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="broken.safetensors is not a safetensors file"):
        rb.convert_state_dict(str(tmp_path / "broken.safetensors"), model)


# === Presets ===

# The RobustBench model cards (model_info/<dataset>/Linf/<name>.json): clean_acc, autoattack_acc.
PUBLISHED = {
    "Wang2023Better_WRN-28-10": (92.44, 67.31),
    "Wang2023Better_WRN-70-16": (93.25, 70.69),
    "Bartoldson2024Adversarial_WRN-94-16": (93.68, 73.71),
    "Singh2023Revisiting_ConvNeXt-T-ConvStem": (72.72, 49.46),
    "Singh2023Revisiting_ConvNeXt-S-ConvStem": (74.10, 52.42),
    "Singh2023Revisiting_ConvNeXt-B-ConvStem": (75.90, 56.14),
    "Singh2023Revisiting_ConvNeXt-L-ConvStem": (77.00, 57.70),
    "Liu2023Comprehensive_ConvNeXt-B": (75.84, 53.98),
    "Liu2023Comprehensive_ConvNeXt-L": (77.18, 56.44),
}


def preset_params(entry):
    kwargs = entry["model_kwargs"]
    if entry["model"].startswith("dm_wide_resnet"):
        depth, width = dm_lib.DM_WIDE_RESNETS[entry["model"]]
        return dm_lib.dm_wide_resnet_params(depth, width, kwargs["num_classes"])
    depths, dims, convs = convnext_lib.CONVNEXT_VARIANTS[entry["model"].split("_", 1)[1]]
    return convnext_lib.convnext_params(
        depths, dims, stem=kwargs.get("stem", "patch"), convstem=convs, num_classes=kwargs["num_classes"]
    )


def test_presets_table():
    assert set(rb.ROBUSTBENCH) == set(PUBLISHED)
    registered = set(models.list_models())
    for name, entry in rb.ROBUSTBENCH.items():
        assert entry["model"] in registered
        assert (entry["published"]["clean"], entry["published"]["autoattack"]) == PUBLISHED[name]
        assert entry["threat_model"] == "Linf"
        assert entry["eps"] == {"cifar10": 8 / 255, "imagenet": 4 / 255}[entry["dataset"]]
    assert rb.ROBUSTBENCH["Singh2023Revisiting_ConvNeXt-L-ConvStem"]["model_kwargs"]["preprocessing"] is None
    assert rb.ROBUSTBENCH["Liu2023Comprehensive_ConvNeXt-L"]["model_kwargs"]["preprocessing"] == "imagenet"
    with pytest.raises(ValueError, match="Unknown RobustBench entry"):
        rb.robustbench_entry("Wang2023Better_WRN-28-11")
    # Sizes: closed form (no build). Bartoldson et al.: 366M; Gowal et al.: WRN-70-16 267M; ConvNeXt-L 197.8M
    # plus the ConvStem's layers.
    sizes = {name: preset_params(entry) for name, entry in rb.ROBUSTBENCH.items()}
    assert round(sizes["Bartoldson2024Adversarial_WRN-94-16"] / 1e6) == 366
    assert round(sizes["Wang2023Better_WRN-70-16"] / 1e6) == 267
    assert round(sizes["Wang2023Better_WRN-28-10"] / 1e5) == 365
    assert round(sizes["Liu2023Comprehensive_ConvNeXt-L"] / 1e5) == 1978
    assert sizes["Singh2023Revisiting_ConvNeXt-T-ConvStem"] == 28_627_432


@pytest.mark.parametrize("name", ["Wang2023Better_WRN-28-10", "Singh2023Revisiting_ConvNeXt-T-ConvStem"])
def test_presets_build(name):
    model = rb.build_preset(name, input_shape=(32, 32, 3))
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == preset_params(rb.ROBUSTBENCH[name])


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_twin_has_the_presets_parameter_count(name):
    entry = rb.ROBUSTBENCH[name]
    if entry["model"].startswith("dm_wide_resnet"):
        depth, width = dm_lib.DM_WIDE_RESNETS[entry["model"]]
        twin = trb.dm_wide_resnet(depth=depth, width=width)
    else:
        depths, dims, convs = convnext_lib.CONVNEXT_VARIANTS[entry["model"].split("_", 1)[1]]
        stem = entry["model_kwargs"].get("stem", "patch")
        twin = trb.convnext_convstem(depths, dims, convs) if stem == "convstem" else trb.convnext(depths, dims)
    assert sum(p.numel() for p in twin.parameters()) == preset_params(entry)


# === AutoAttack, export, launcher ===

REFERENCE_AA = r"""
import json, logging, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
import torch_robustbench as trb
from pyautoattack import AutoAttack
root = sys.argv[1]
settings = json.load(open(root + "/settings.json"))
twin = trb.dm_wide_resnet(**settings["twin"])
twin.load_state_dict(torch.load(root + "/twin.pt", weights_only=True))
twin.eval()
data = np.load(root + "/points.npz")
x = torch.from_numpy(np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2)))
y = torch.from_numpy(data["y"])
runner = AutoAttack(twin, eps=settings["eps"], norm="Linf", seed=0, version="standard", device="cpu")
runner.logger.setLevel(logging.WARNING)
runner.apgd.n_iter = 20
runner.apgd_targeted.n_iter = 20
runner.apgd_targeted.n_target_classes = 3
runner.fab.n_iter = 20
runner.fab.n_target_classes = 3
runner.square.n_queries = 200
x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=len(y))
with torch.no_grad():
    robust = (twin(x_adv).argmax(1) == y).numpy()
np.save(root + "/robust.npy", robust)
"""


@pytest.mark.slow
def test_autoattack_on_the_converted_model_agrees_with_the_reference_on_the_twin(tmp_path):
    """Both `standard` AutoAttacks (20 APGD/FAB steps, 3 target classes, 200 Square queries) on 32 points.

    The labels are the model's own clean predictions, so every point starts correct; eps = 0.004 leaves about
    half of them unbroken, so both attacks have points to break and points to miss. The reference runs in a
    subprocess (torch's and TensorFlow's thread pools in one process slow it ~8x).
    """
    import importlib

    aa = importlib.import_module("sat_tf.attacks.autoattack")
    settings = {"twin": {"depth": 10, "width": 1}, "eps": 0.004}
    twin = trb.randomize_(trb.dm_wide_resnet(**settings["twin"]), seed=3)
    torch.save(twin.state_dict(), tmp_path / "twin.pt")
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
    rb.convert_state_dict(str(tmp_path / "twin.pt"), model)
    x = points((16, 16, 3), count=32, seed=5)
    y = model(x, training=False).numpy().argmax(1)
    assert len(set(y.tolist())) >= 3
    np.savez(tmp_path / "points.npz", x=x, y=y)
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_AA, str(tmp_path), os.path.join(ROOT, "benchmarks")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    options = {
        "apgd-ce": {"steps": 20},
        "apgd-t": {"steps": 20, "n_target_classes": 3},
        "fab-t": {"steps": 20, "n_target_classes": 3},
        "square": {"queries": 200},
    }
    ours = tf.function(
        lambda a, b: aa.autoattack(
            lambda z: model(z, training=False), a, b, eps=settings["eps"], seed=0, options=options
        )
    )(x, y)
    ours_robust = ours.robust["square"].numpy()
    assert ours.warnings() == []
    _, err = reference.communicate(timeout=900)
    assert reference.returncode == 0, err[-2000:]
    theirs = np.load(tmp_path / "robust.npy")
    agree = float(np.mean(ours_robust == theirs))
    print(
        f"robust accuracy: ours {ours_robust.mean():.4f}, reference {theirs.mean():.4f}, "
        f"same flags on {agree:.4f} of {len(y)} points"
    )
    assert 0.2 <= theirs.mean() <= 0.8
    assert abs(ours_robust.mean() - theirs.mean()) <= 2 / 32
    assert agree >= 0.9


@pytest.mark.slow
def test_converted_model_exports_with_the_serving_signatures(tmp_path):
    from sat_tf import export

    twin = trb.randomize_(trb.convnext_convstem(DEPTHS, DIMS, CONVSTEM_2, num_classes=7), seed=6)
    model = models.build_model(
        "convnext_tiny",
        stem="convstem",
        depths=DEPTHS,
        dims=DIMS,
        convstem_convs=CONVSTEM_2,
        num_classes=7,
        preprocessing=None,
        input_shape=(32, 32, 3),
    )
    rb.convert_state_dict(twin.state_dict(), model)
    export.export_saved_model(model, str(tmp_path / "sm"), top_k=3, crop_padding=0)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    assert {"serving_default", "serve_uint8", "serve_float", "serve_jpeg", "logits_float"} <= set(loaded.signatures)
    x = points((32, 32, 3), count=3, seed=7)
    served = loaded.signatures["serve_float"](images=tf.constant(x))["logits"].numpy()
    assert np.abs(served - twin_logits(twin, x)).max() <= TOLERANCE
    assert loaded.signatures["logits_float"](images=tf.constant(x))["logits"].shape == (3, 7)


@pytest.mark.slow
def test_launcher_converts_a_checkpoint_and_reports_bad_flags(tmp_path):
    import keras

    twin = trb.randomize_(trb.dm_wide_resnet(depth=10, width=2), seed=8)
    torch.save({"state_dict": twin.state_dict()}, tmp_path / "dm.pt")
    script = os.path.join(ROOT, "launch", "convert_robustbench.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [
            sys.executable,
            script,
            f"--checkpoint={tmp_path / 'dm.pt'}",
            "--model=dm_wide_resnet28_10",
            '--model_kwargs={"depth": 10, "width": 2}',
            "--image_size=16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded" in run.stdout
    model = keras.saving.load_model(tmp_path / "dm.keras", safe_mode=True)
    x = points((16, 16, 3))
    assert np.abs(model(x, training=False).numpy() - twin_logits(twin, x)).max() <= TOLERANCE

    bad = subprocess.run(
        [sys.executable, script, f"--checkpoint={tmp_path / 'dm.pt'}", "--preset=Wang2023Better_WRN-28-10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if "does not fit model" in line]
    assert len(lines) == 1 and "shape mismatches" in lines[0]
