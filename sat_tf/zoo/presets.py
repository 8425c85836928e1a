"""The released SAT checkpoints: `ZOO`, one entry per download name.

Names are those of SAT's `ResNet/download_resnet.py` and
`EfficientNet/download_efficientnet.py`; `published` holds the accuracies of
SAT's README (%, ImageNet val, untargeted PGD eps 4/255, step 1/255; the
EfficientNet PGD columns are "TODO" upstream, and the softplus/mish ResNets
have no published numbers). `channel_order` is the input order SAT's
released code feeds each family (`sat_tf.zoo.FAMILIES`): BGR for the
tensorpack ResNets, RGB for the TPU EfficientNets. Not checked against
ImageNet offline: if a converted model's clean accuracy falls short of
`published`, convert again with the other order.
"""

_PGD = ("clean", "pgd10", "pgd20", "pgd50")


def _resnet(model, activation, size, scores, **kwargs):
    published = dict(zip(_PGD, scores)) if scores else None
    return {
        "family": "resnet",
        "model": model,
        "activation": activation,
        "input_size": size,
        "model_kwargs": kwargs,
        "use_ema": False,
        "channel_order": "bgr",
        "published": published,
    }


def _efficientnet(model, size, clean, use_ema=False):
    return {
        "family": "efficientnet",
        "model": model,
        "activation": "silu",
        "input_size": size,
        "model_kwargs": {"bn_epsilon": 1e-5, "bn_momentum": 0.9},
        "use_ema": use_ema,
        "channel_order": "rgb",
        "published": {"clean": clean},
    }


ZOO = {
    "Res50-relu": _resnet("resnet50", "relu", 224, (68.7, 35.3, 33.7, 33.1)),
    "Res50-silu": _resnet("resnet50", "silu", 224, (69.7, 43.0, 42.2, 41.9)),
    "Res50-smoothrelu": _resnet("resnet50", "smooth_relu", 224, (69.3, 41.3, 40.4, 40.1)),
    "Res50-gelu": _resnet("resnet50", "gelu", 224, (69.9, 42.6, 41.8, 41.5)),  # tanh form
    "Res50-elu": _resnet("resnet50", "elu", 224, (69.0, 41.6, 40.9, 40.7)),
    "Res50-softplus": _resnet("resnet50", "softplus", 224, None),
    "Res50-mish": _resnet("resnet50", "mish", 224, None),
    "Res50-silu-299": _resnet("resnet50", "silu", 299, (70.7, 44.6, 43.8, 43.6)),
    "Res50-silu-380": _resnet("resnet50", "silu", 380, (71.6, 44.9, 44.1, 43.8)),
    "ResX50-silu-32x4d": _resnet(
        "resnext50_32x4d", "silu", 224, (71.1, 43.3, 42.5, 42.2), groups=32, bottleneck_width=4
    ),
    "ResX50-silu-32x8d": _resnet(
        "resnext50_32x8d", "silu", 224, (73.3, 46.3, 45.2, 44.8), groups=32, bottleneck_width=8
    ),
    "Res101-silu": _resnet("resnet101", "silu", 224, (72.9, 46.4, 45.5, 45.2)),
    "Res152-silu": _resnet("resnet152", "silu", 224, (74.0, 47.3, 46.2, 45.8)),
    "ResX152-silu-380-32x8d": _resnet(
        "resnext152_32x8d", "silu", 380, (78.0, 53.0, 51.7, 51.0), groups=32, bottleneck_width=8
    ),
    "efficientnet-b0": _efficientnet("efficientnet_b0", 224, 65.2),
    "efficientnet-b1": _efficientnet("efficientnet_b1", 240, 68.6),
    "efficientnet-b2": _efficientnet("efficientnet_b2", 260, 70.3),
    "efficientnet-b3": _efficientnet("efficientnet_b3", 300, 73.1),
    "efficientnet-b4": _efficientnet("efficientnet_b4", 380, 75.9),
    "efficientnet-b5": _efficientnet("efficientnet_b5", 456, 77.8),
    "efficientnet-b6": _efficientnet("efficientnet_b6", 528, 79.2),
    "efficientnet-b7": _efficientnet("efficientnet_b7", 600, 79.8),
    # Both L1 downloads are built as `efficientnet-bL1`; "enhanced" is the
    # weight-EMA (decay 0.9999) model, 82.2 clean (58.6 PGD claimed, no code).
    "efficientnet-bL1": _efficientnet("efficientnet_l1", 600, 80.7),
    "efficientnet-bL1-enhanced": _efficientnet("efficientnet_l1", 600, 82.2, use_ema=True),
}


def zoo_entry(name):
    """A copy of the `ZOO` entry of a download name, or a ValueError listing
    the known names."""
    if name not in ZOO:
        raise ValueError(f"Unknown zoo name {name!r}. Known: {sorted(ZOO)}")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in ZOO[name].items()}
