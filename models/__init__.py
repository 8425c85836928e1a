"""Model registry: `build_model(name, **kwargs)`, `list_models()`.

Every entry point takes keyword arguments only, sets the architecture's
defaults and lets the caller's kwargs win (as timm):

    model = build_model("resnet50", activation="silu")       # SAT ResNet-50
    model = build_model("wide_resnet34_10", activation="softplus")

Each returns a functional `keras.Model` (a `layers.ImageClassifier`) whose
input is float32 pixels in [0, 1], NHWC, with the preprocessing inside the
model, and whose output is logits. Shared kwargs: `num_classes`,
`input_shape`, `activation`, `preprocessing`, `data_format`, `bn_momentum`,
`bn_epsilon`, `name`.
"""

import fnmatch

_MODELS = {}
_MODULES = {}


def register_model(fn):
    """Registers an entry point under `fn.__name__`; refuses duplicates."""
    name = fn.__name__
    if name in _MODELS:
        raise KeyError(f"Model {name!r} is already registered (by {_MODULES[name]}). Received: {fn.__module__}.{name}")
    _MODELS[name] = fn
    _MODULES[name] = fn.__module__
    return fn


def list_models(filter=""):  # noqa: A002 (timm's argument name)
    """Sorted registered names. `filter` is a shell-style pattern if it has
    `*?[`, else a substring; `""` lists all."""
    names = sorted(_MODELS)
    if not filter:
        return names
    if any(c in filter for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, filter)]
    return [n for n in names if filter in n]


def build_model(model_name, /, **kwargs):
    """Builds the registered model `model_name`; kwargs override its defaults
    (`model_name` is positional-only, so `name=` reaches the model)."""
    if model_name not in _MODELS:
        raise ValueError(f"Unknown model {model_name!r}. Known: {sorted(_MODELS)}")
    return _MODELS[model_name](**kwargs)


# Imported last: their entry points register themselves with the functions above.
from sat_tf.models import (
    cifar,  # noqa: E402,F401
    convnext,  # noqa: E402,F401
    digits,  # noqa: E402,F401
    dm_wide_resnet,  # noqa: E402,F401
    efficientnet,  # noqa: E402,F401
    mnist,  # noqa: E402,F401
    resnet,  # noqa: E402,F401
)
