"""The trainer's config -> component glue for the training attack, mixup, optimizer and initial weights.

launch/train.py calls these with a validated config; each turns config fields into the plain
values a library component takes (`sat_tf.attacks`, `sat_tf.training.mixup`, Keras optimizers,
`sat_tf.zoo`), so the components never see a config.
"""

from sat_tf import config as config_lib


def training_attack(config):
    """The attack of objective "adversarial": `attacks.TRAINING_ATTACKS[config.attack.name]` with its budget.

    "apgd" is `attacks.apgd_train` (eps and steps only: APGD chooses its step and starts at x).
    """
    from sat_tf import attacks

    a = config.attack
    if a.name == "none" or a.steps == 0 or a.eps == 0:
        return attacks.get_training_attack("none")
    kwargs = {"eps": a.eps}
    if a.name == "apgd":
        kwargs["steps"] = a.steps
    elif a.name != "fgsm":
        kwargs.update(step_size=a.step_size, steps=a.steps, prob_start_from_clean=a.prob_start_from_clean)
        if a.step_size_rule != "fixed":
            kwargs["step_size_rule"] = a.step_size_rule
    return attacks.get_training_attack(a.name, **kwargs)


def with_mixup(config, attack, num_classes, strategy):
    """`attack` unchanged without mixup, else a `MixupObjective` around it (counters made under `strategy`)."""
    if not config_lib.mixup_enabled(config):
        return attack
    from sat_tf.training import mixup

    m = config.mixup
    with strategy.scope():
        return mixup.MixupObjective(
            attack,
            num_classes=num_classes,
            label_smoothing=config.objective.label_smoothing,
            mixup_alpha=m.mixup_alpha,
            cutmix_alpha=m.cutmix_alpha,
            prob=m.prob,
            switch_prob=m.switch_prob,
        )


def l2_weight_decay(config):
    """The replica step's coupled L2 coefficient: AdamW decays through the optimizer instead."""
    return 0.0 if config.optimizer.name == "adamw" else config.optimizer.weight_decay


def no_decay_variables(model, rule):
    """The trainable variables AdamW leaves undecayed under `rule` ("vectors" or "biases")."""
    if rule == "vectors":  # timm param_groups_weight_decay: ndim <= 1 or a bias
        return [v for v in model.trainable_variables if len(v.shape) <= 1 or v.path.endswith("bias")]
    # PyTorch's `.bias` of a layer or a norm (Keras names a norm's offset `beta`), as Singh et al.'s ConvNeXt
    # code excludes: LayerNorm scales and layer scale keep their decay there.
    return [v for v in model.trainable_variables if v.path.split("/")[-1] in ("bias", "beta")]


def make_optimizer(config, schedule, model):
    """The Keras optimizer of `config.optimizer` (create it under the strategy's scope)."""
    import keras

    o = config.optimizer
    if o.name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "rmsprop":
        return keras.optimizers.RMSprop(schedule, rho=0.9, momentum=o.momentum, epsilon=1e-3)
    optimizer = keras.optimizers.AdamW(
        schedule, weight_decay=o.weight_decay, beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model, o.no_decay))
    return optimizer


def load_init_weights(model, path, *, use_ema=False, channel_order=None):
    """Loads `path` into `model`: a .keras file of the same architecture, else a SAT TF1 checkpoint.

    Returns a one-line summary. A .keras file must hold exactly the model's weights (paths and
    shapes); otherwise a ConfigError listing what differs, and nothing is assigned.
    """
    if not path.endswith(".keras"):
        from sat_tf import zoo

        return zoo.load_tf1_checkpoint(model, path, use_ema=use_ema, channel_order=channel_order).summary()
    import keras

    from sat_tf import models  # noqa: F401  (registers the serializable layers the file names)

    source = keras.saving.load_model(path, compile=False, safe_mode=True)
    ours = {w.path: w for w in model.weights}
    theirs = {w.path: w for w in source.weights}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    mismatched = sorted(p for p in set(ours) & set(theirs) if tuple(ours[p].shape) != tuple(theirs[p].shape))
    if missing or unexpected or mismatched:

        def listing(label, items):
            return f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"

        problems = [
            listing(label, items)
            for label, items in (
                ("missing in the file", missing),
                ("not in the model", unexpected),
                ("shape differs", mismatched),
            )
            if items
        ]
        raise config_lib.ConfigError(
            f"config.model.init_checkpoint={path} does not fit {model.name}: "
            + "; ".join(problems)
            + ". Build the run's model with the file's "
            "architecture (config.model.name/options)."
        )
    for name, weight in ours.items():
        weight.assign(theirs[name])
    return f"loaded {len(ours)} weights from {path} ({source.name})"
