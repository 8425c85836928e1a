"""RobustBench checkpoints -> our Keras models: `convert_state_dict`, `load_state_dict`, `ROBUSTBENCH`.

`convert_state_dict(state_dict_or_path, model)` maps every tensor of a PyTorch state dict of a
`DMWideResNet` (Wang et al. 2023, Bartoldson et al. 2024, ...) or a timm ConvNeXt with or without Singh et
al.'s ConvStem (Singh et al. 2023, Liu et al. 2023) onto the weight of the same name in
`sat_tf.models.build_model("dm_wide_resnet*" | "convnext_*")`, one to one: our layer names are the PyTorch
module paths with `.` -> `_` (`layer.0.block.1.conv_0.weight` -> layer `layer_0_block_1_conv_0`, `kernel`),
and the layer-scale parameter `stages.0.blocks.0.gamma` is the `gamma` of the `LayerScale` layer
`stages_0_blocks_0_gamma`. Layouts: conv OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), linear
transposed; BatchNorm `weight`/`bias`/`running_mean`/`running_var` -> `gamma`/`beta`/`moving_mean`/
`moving_variance` (`num_batches_tracked` is a counter, not a weight); LayerNorm `weight`/`bias` ->
`gamma`/`beta`. The input normalisation buffers (`mean`/`std` of DMWideResNet, `normalize.mean`/`.std` of
RobustBench's `normalize_model`) are not weights here (our `Normalize` layer holds them as config); they are
checked against the model's, so a converted model normalises as the checkpoint expects.

Nothing is assigned unless every tensor has a model weight, every model weight has a tensor, and every shape
fits: otherwise one ValueError lists all the unknown, missing and mismatched keys.

Loading is safe: `.safetensors` files are parsed here (an 8-byte header length, a JSON header, raw
little-endian arrays: no code), and `.pt`/`.pth`/`.ckpt`/`.bin` files go through
`torch.load(path, map_location="cpu", weights_only=True)`, which refuses pickled code. A RobustBench
checkpoint's `state_dict` wrapper and `module.`/`model.` prefixes are removed as RobustBench's `load_model`
does. Nothing is downloaded: fetch a checkpoint with RobustBench (`robustbench.utils.load_model` writes
`models/<dataset>/<threat model>/<name>.pt`), then convert it (`launch/convert_robustbench.py`).

`ROBUSTBENCH` names the supported leaderboard entries with their architecture, build kwargs, dataset, threat
model, eps and published clean / AutoAttack accuracy. Not checked here against real checkpoints or data:
none are on this machine (see tests/test_robustbench.py for what is checked).
"""

import dataclasses
import json
import os
import struct

import numpy as np

# === The supported RobustBench entries ===

# Published numbers: RobustBench's model cards `model_info/<dataset>/<threat model>/<name>.json` (fields
# `clean_acc` and `autoattack_acc`, %, on the leaderboard's test points: the CIFAR-10 test set and ImageNet's
# 5,000-image validation subset), which also give each entry's architecture and eps. Architectures and
# input handling: RobustBench `robustbench/model_zoo/cifar10.py` / `imagenet.py` and `utils.load_model`.
_DM_CIFAR10 = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]}


def _cifar10_linf(model, clean, autoattack, paper):
    # DMWideResNet(num_classes=10, depth, width, activation_fn=nn.SiLU, mean=CIFAR10_MEAN, std=CIFAR10_STD).
    return {
        "model": model,
        "model_kwargs": {"num_classes": 10, "activation": "silu", "preprocessing": _DM_CIFAR10},
        "dataset": "cifar10",
        "threat_model": "Linf",
        "eps": 8 / 255,
        "eps_text": "8/255",
        "input_size": 32,
        "published": {"clean": clean, "autoattack": autoattack},
        "paper": paper,
    }


def _imagenet_linf(model, clean, autoattack, paper, **kwargs):
    # 224x224 crops ("BicubicRes256Crop224": bicubic resize to 256, centre crop 224), eps 4/255.
    return {
        "model": model,
        "model_kwargs": {"num_classes": 1000, "activation": "gelu_erf", **kwargs},
        "dataset": "imagenet",
        "threat_model": "Linf",
        "eps": 4 / 255,
        "eps_text": "4/255",
        "input_size": 224,
        "published": {"clean": clean, "autoattack": autoattack},
        "paper": paper,
    }


ROBUSTBENCH = {
    # model_info/cifar10/Linf/Wang2023Better_WRN-28-10.json: 92.44 / 67.31 (20M generated images).
    "Wang2023Better_WRN-28-10": _cifar10_linf("dm_wide_resnet28_10", 92.44, 67.31, "arXiv:2302.04638"),
    # model_info/cifar10/Linf/Wang2023Better_WRN-70-16.json: 93.25 / 70.69 (50M generated images).
    "Wang2023Better_WRN-70-16": _cifar10_linf("dm_wide_resnet70_16", 93.25, 70.69, "arXiv:2302.04638"),
    # model_info/cifar10/Linf/Bartoldson2024Adversarial_WRN-94-16.json: 93.68 / 73.71 (500M generated
    # images); the same DMWideResNet class at depth 94, width 16, nn.SiLU.
    "Bartoldson2024Adversarial_WRN-94-16": _cifar10_linf("dm_wide_resnet94_16", 93.68, 73.71, "arXiv:2404.09349"),
    # Singh et al.: RobustBench builds get_convstem_models(...) WITHOUT normalize_model and loads the
    # checkpoint without the `model.` prefix, so these networks take [0, 1] pixels un-normalised
    # (preprocessing=None). model_info/imagenet/Linf/Singh2023Revisiting_ConvNeXt-{T,S,B,L}-ConvStem.json.
    "Singh2023Revisiting_ConvNeXt-T-ConvStem": _imagenet_linf(
        "convnext_tiny", 72.72, 49.46, "arXiv:2303.01870", stem="convstem", preprocessing=None
    ),
    "Singh2023Revisiting_ConvNeXt-S-ConvStem": _imagenet_linf(
        "convnext_small", 74.10, 52.42, "arXiv:2303.01870", stem="convstem", preprocessing=None
    ),
    "Singh2023Revisiting_ConvNeXt-B-ConvStem": _imagenet_linf(
        "convnext_base", 75.90, 56.14, "arXiv:2303.01870", stem="convstem", preprocessing=None
    ),
    "Singh2023Revisiting_ConvNeXt-L-ConvStem": _imagenet_linf(
        "convnext_large", 77.00, 57.70, "arXiv:2303.01870", stem="convstem", preprocessing=None
    ),
    # Liu et al.: normalize_model(timm.create_model('convnext_base'|'convnext_large'), ImageNet mean/std).
    # model_info/imagenet/Linf/Liu2023Comprehensive_ConvNeXt-{B,L}.json.
    "Liu2023Comprehensive_ConvNeXt-B": _imagenet_linf(
        "convnext_base", 75.84, 53.98, "arXiv:2302.14301", preprocessing="imagenet"
    ),
    "Liu2023Comprehensive_ConvNeXt-L": _imagenet_linf(
        "convnext_large", 77.18, 56.44, "arXiv:2302.14301", preprocessing="imagenet"
    ),
}


def robustbench_entry(name):
    """A copy of the `ROBUSTBENCH` entry `name`, or a ValueError listing the known names."""
    if name not in ROBUSTBENCH:
        raise ValueError(f"Unknown RobustBench entry {name!r}. Known: {sorted(ROBUSTBENCH)}")
    entry = ROBUSTBENCH[name]
    return {k: (json.loads(json.dumps(v)) if isinstance(v, dict) else v) for k, v in entry.items()}


def build_preset(name, **overrides):
    """The Keras model of the RobustBench entry `name` (random weights); `overrides` win over its kwargs."""
    from sat_tf import models

    entry = robustbench_entry(name)
    size = entry["input_size"]
    kwargs = {"input_shape": (size, size, 3), **entry["model_kwargs"], **overrides}
    return models.build_model(entry["model"], **kwargs)


# === Reading state dicts safely ===

_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def read_safetensors(path):
    """{name: np.ndarray} from a `.safetensors` file (BF16 widened to float32). Parses the format itself:
    a little-endian u64 header size, a JSON header of dtype/shape/data_offsets, then the raw bytes."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header size)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"{path} is not a safetensors file (header size {size} > file size {len(data)})")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as err:
        raise ValueError(f"{path} is not a safetensors file (its header is not JSON: {err})") from None
    body = memoryview(data)[8 + size :]
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        if info["dtype"] == "BF16":  # the upper half of a float32
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which is not supported")
        arrays[name] = array.reshape(info["shape"]).copy()
    return arrays


def write_safetensors(path, arrays):
    """Writes {name: array} (float32/float16/float64/int) as a `.safetensors` file; the inverse of
    `read_safetensors`, for tests and for converting a `.pt` once where torch is installed."""
    names = {np.dtype(v).str: k for k, v in _SAFETENSORS_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        code = names.get(array.dtype.newbyteorder("<").str if array.dtype.itemsize > 1 else array.dtype.str)
        if code is None:
            raise ValueError(f"cannot write {name!r}: dtype {array.dtype} has no safetensors code")
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))
    return path


def _torch_load(path):
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"reading {path} needs PyTorch (pip install torch), or convert the checkpoint to "
            ".safetensors where torch is installed"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for unsafe or broken files
        raise ValueError(
            f"{path} cannot be loaded with torch.load(weights_only=True) (only tensors and plain "
            f"containers are accepted, never pickled code): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    return None


def _unwrap(obj, source):
    """The tensor dict inside a checkpoint: RobustBench's `state_dict` wrapper (or `model` /
    `model_state_dict`), else the object itself."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(_to_numpy(v) is not None for v in inner.values()):
            return inner
    return obj


def _strip_prefixes(names):
    """RobustBench strips `module.` (DataParallel) and `model.` (normalize_model) before loading."""
    out = {}
    for name in names:
        key = name
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key in out:
            raise ValueError(f"state dict keys {out[key]!r} and {name!r} collide once prefixes are removed")
        out[key] = name
    return out


def load_state_dict(path_or_state_dict):
    """{canonical name: float32/int np.ndarray} from a path (`.safetensors` or a torch file) or a dict."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} not found")
        if path.endswith(".safetensors"):
            raw = read_safetensors(path)
        elif path.endswith(_TORCH_SUFFIXES):
            raw = _torch_load(path)
        else:
            raise ValueError(
                f"checkpoint {path}: expected a .safetensors file or a torch file ({', '.join(_TORCH_SUFFIXES)})"
            )
        source = path
    else:
        raw, source = path_or_state_dict, "the state dict"
    tensors = _unwrap(raw, source)
    arrays = {}
    for name, value in tensors.items():
        array = _to_numpy(value)
        if array is None:
            raise ValueError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor")
        arrays[name] = array
    return {key: arrays[name] for key, name in _strip_prefixes(arrays).items()}


# === Name and layout mapping ===

_NORMALIZATION_KEYS = {"mean": "mean", "std": "std", "normalize.mean": "mean", "normalize.std": "std"}


def _torch_to_keras(layer, leaf, array):
    """(keras weight name, array in the Keras layout) of the torch parameter `leaf` of `layer`, or None."""
    import keras

    from sat_tf.models.convnext import LayerScale

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return {
            "weight": ("kernel", lambda a: a.transpose(2, 3, 0, 1) if a.ndim == 4 else a),
            "bias": ("bias", None),
        }.get(leaf)
    if isinstance(layer, keras.layers.Conv2D):
        return {
            "weight": ("kernel", lambda a: a.transpose(2, 3, 1, 0) if a.ndim == 4 else a),
            "bias": ("bias", None),
        }.get(leaf)
    if isinstance(layer, keras.layers.Dense):
        return {"weight": ("kernel", lambda a: a.T if a.ndim == 2 else a), "bias": ("bias", None)}.get(leaf)
    if isinstance(layer, keras.layers.BatchNormalization):
        return {
            "weight": ("gamma", None),
            "bias": ("beta", None),
            "running_mean": ("moving_mean", None),
            "running_var": ("moving_variance", None),
        }.get(leaf)
    if isinstance(layer, keras.layers.LayerNormalization):
        return {"weight": ("gamma", None), "bias": ("beta", None)}.get(leaf)
    if isinstance(layer, LayerScale):
        return {"gamma": ("gamma", None)}.get(leaf)
    return None


def _normalization(model):
    from sat_tf.models.layers import Normalize

    found = [layer for layer in model.layers if isinstance(layer, Normalize)]
    if not found:
        return None
    layer = found[0]
    return {"mean": np.ravel(layer.mean).astype(np.float64), "std": np.ravel(layer.std).astype(np.float64)}


@dataclasses.dataclass
class RobustBenchConversion:
    """What `convert_state_dict` did. `loaded` entries read `keras weight path <- torch key`; `ignored`:
    BatchNorm `num_batches_tracked` counters; `normalization`: how the checkpoint's mean/std buffers
    compared with the model's preprocessing."""

    source: str
    model: str
    loaded: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)
    normalization: str = ""

    def summary(self):
        return (
            f"{self.model} <- {self.source}: loaded {len(self.loaded)} tensors, ignored "
            f"{len(self.ignored)} BatchNorm counters; {self.normalization}"
        )


def _listing(label, items, limit=12):
    shown = "; ".join(items[:limit]) + (f"; ... (+{len(items) - limit} more)" if len(items) > limit else "")
    return f"{len(items)} {label}: {shown}"


def convert_state_dict(state_dict_or_path, model):
    """Loads a RobustBench/PyTorch state dict into `model` (see the module docstring). Returns a
    `RobustBenchConversion`; raises ValueError naming every unknown, missing or mismatched key."""
    source = os.fspath(state_dict_or_path) if isinstance(state_dict_or_path, (str, os.PathLike)) else "state dict"
    arrays = load_state_dict(state_dict_or_path)
    layers = {layer.name: layer for layer in model.layers}
    weights = {}
    for layer in model.layers:
        for variable in layer.weights:
            if variable.name != "seed_generator_state":  # DropPath's RNG state, not a weight
                weights[(layer.name, variable.name)] = variable
    report = RobustBenchConversion(source, model.name)
    unknown, mismatched, norm_problems, assignments, claimed = [], [], [], [], {}
    buffers = {}
    for key in sorted(arrays):
        array = arrays[key]
        if key in _NORMALIZATION_KEYS:
            buffers[_NORMALIZATION_KEYS[key]] = (key, np.ravel(array).astype(np.float64))
            continue
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            report.ignored.append(key)
            continue
        name = module.replace(".", "_")
        target = None
        for candidate in (name, f"{name}_{leaf}"):  # `blocks.0.gamma` is the LayerScale `blocks_0_gamma`
            if candidate in layers:
                target = _torch_to_keras(layers[candidate], leaf, array)
                if target is not None:
                    name = candidate
                    break
        if target is None or (name, target[0]) not in weights:
            unknown.append(key)
            continue
        variable = weights[(name, target[0])]
        value = target[1](array) if target[1] else array
        claimed[(name, target[0])] = key
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{key} {list(array.shape)} -> {variable.path} {list(variable.shape)}")
            continue
        assignments.append((variable, value))
        report.loaded.append(f"{variable.path} <- {key}")
    missing = [v.path for k, v in weights.items() if k not in claimed]

    ours = _normalization(model)
    if buffers:
        described = ", ".join(f"{key}={np.round(values, 4).tolist()}" for key, values in buffers.values())
        if ours is None:
            norm_problems.append(
                f"the checkpoint normalises its input ({described}) but the model has no "
                "preprocessing layer; build it with preprocessing={'mean': ..., 'std': ...}"
            )
        else:
            for stat, (key, values) in buffers.items():
                mine = np.broadcast_to(ours[stat], values.shape) if ours[stat].size == 1 else ours[stat]
                if mine.shape != values.shape or not np.allclose(mine, values, atol=1e-6):
                    norm_problems.append(
                        f"{key}={np.round(values, 4).tolist()} but the model's preprocessing "
                        f"has {stat}={np.round(ours[stat], 4).tolist()}"
                    )
        report.normalization = f"checkpoint normalisation {described} " + (
            "matches the model's" if not norm_problems else "does not match"
        )
    else:
        report.normalization = "no normalisation buffers in the checkpoint; the model's preprocessing: " + (
            "none"
            if ours is None
            else f"mean={np.round(ours['mean'], 4).tolist()}, std={np.round(ours['std'], 4).tolist()}"
        )

    if unknown or missing or mismatched or norm_problems:
        parts = []
        if unknown:
            parts.append(_listing("checkpoint tensors with no model weight", unknown))
        if missing:
            parts.append(_listing("model weights missing from the checkpoint", missing))
        if mismatched:
            parts.append(_listing("shape mismatches", mismatched))
        parts += norm_problems
        raise ValueError(
            f"{source} does not fit model {model.name}: "
            + " | ".join(parts)
            + ". Check the architecture (ROBUSTBENCH entry, depth/width, variant, stem, num_classes)."
        )
    for variable, value in assignments:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return report
