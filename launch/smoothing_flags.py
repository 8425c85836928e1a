"""Randomized-smoothing training flags shared by the training launchers.

`--noise_sd` > 0 trains the base classifier of a smoothed classifier
(Cohen et al.: Gaussian augmentation); `--smoothadv_attack=pgd|ddn` adds
SmoothAdv's attack on the smoothed soft classifier (Salman et al.). The
budget uses the SmoothAdv reference's units, 1/256 (not 1/255):
`--smoothadv_epsilon=64` is 0.25 in [0, 1] pixel space, L2.

In this mode the SAT L-inf `--attack*` flags do not apply, and label
smoothing defaults to 0 (the reference trains with plain cross-entropy).
"""

from absl import flags

from launch import common

flags.DEFINE_float("noise_sd", 0.0, "Randomized smoothing: Gaussian noise sigma in [0, 1] pixel units (0: off). Certify with launch/certify.py.")
flags.DEFINE_enum("smoothadv_attack", "none", ["none", "pgd", "ddn"], "SmoothAdv attack on the smoothed classifier (none: Gaussian augmentation only).")
flags.DEFINE_float("smoothadv_epsilon", 64.0, "SmoothAdv L2 budget in 1/256 units, as the reference (64 -> 0.25).")
flags.DEFINE_integer("smoothadv_steps", 10, "SmoothAdv attack steps T (PGD step 2*eps/T).")
flags.DEFINE_integer("smoothadv_num_noise_vec", 1, "m: noise draws per image, shared by the attack and the training step.")
flags.DEFINE_bool("smoothadv_train_multi_noise", False, "Train on all m noisy copies (rows per step = batch * m) instead of the first.")
flags.DEFINE_integer("smoothadv_warmup", 1, "Epochs over which epsilon ramps up linearly (1: no ramp; the reference README uses 10).")
flags.DEFINE_float("smoothadv_gamma_ddn", 0.05, "DDN's norm update factor.")

FLAGS = flags.FLAGS


def enabled():
    return FLAGS.noise_sd > 0 or FLAGS.smoothadv_attack != "none"


def smoothadv_units(value):
    """The reference's 1/256 budget units -> [0, 1] pixel units."""
    return float(value) / 256.0


def validate():
    """Raises FlagError for bad smoothing flags or a clash with the SAT attack flags."""
    common.require(0 <= FLAGS.noise_sd <= 10, f"--noise_sd must be in [0, 10] ([0, 1] pixel units), got {FLAGS.noise_sd}")
    common.require(0 <= FLAGS.smoothadv_epsilon <= 4096, f"--smoothadv_epsilon must be in [0, 4096] (1/256 units: 64 means 0.25), got {FLAGS.smoothadv_epsilon}")
    common.require(FLAGS.smoothadv_steps >= 1, f"--smoothadv_steps must be >= 1, got {FLAGS.smoothadv_steps}")
    common.require(1 <= FLAGS.smoothadv_num_noise_vec <= 256, f"--smoothadv_num_noise_vec must be in [1, 256], got {FLAGS.smoothadv_num_noise_vec}")
    common.require(FLAGS.smoothadv_warmup >= 1, f"--smoothadv_warmup must be >= 1 epoch, got {FLAGS.smoothadv_warmup}")
    common.require(0 < FLAGS.smoothadv_gamma_ddn < 1, f"--smoothadv_gamma_ddn must be in (0, 1), got {FLAGS.smoothadv_gamma_ddn}")
    if not enabled():
        return
    for name in ("attack", "attack_iter", "attack_epsilon", "attack_step_size", "prob_start_from_clean"):
        if name in FLAGS and FLAGS[name].present:
            raise common.FlagError(
                f"--{name} sets SAT's L-inf training attack and cannot be combined with "
                "--noise_sd/--smoothadv_attack; use the --smoothadv_* flags"
            )


def label_smoothing():
    """The training loss's label smoothing: 0 in smoothing mode unless set."""
    if enabled() and not FLAGS["label_smoothing"].present:
        return 0.0
    return FLAGS.label_smoothing


def objective(steps_per_epoch):
    """(SmoothAdvObjective, its JSON-able description for run_config.json)."""
    from sat_tf.training import objectives

    config = {
        "noise_sd": FLAGS.noise_sd,
        "attack": FLAGS.smoothadv_attack,
        "epsilon": smoothadv_units(FLAGS.smoothadv_epsilon),
        "epsilon_256": FLAGS.smoothadv_epsilon,
        "steps": FLAGS.smoothadv_steps,
        "num_noise_vec": FLAGS.smoothadv_num_noise_vec,
        "multi_noise": FLAGS.smoothadv_train_multi_noise,
        "warmup": FLAGS.smoothadv_warmup,
        "gamma_ddn": FLAGS.smoothadv_gamma_ddn,
    }
    built = objectives.SmoothAdvObjective(
        sigma=FLAGS.noise_sd,
        attack=FLAGS.smoothadv_attack,
        epsilon=config["epsilon"],
        steps=FLAGS.smoothadv_steps,
        num_noise=FLAGS.smoothadv_num_noise_vec,
        multi_noise=FLAGS.smoothadv_train_multi_noise,
        warmup_epochs=FLAGS.smoothadv_warmup,
        steps_per_epoch=steps_per_epoch,
        ddn_gamma=FLAGS.smoothadv_gamma_ddn,
    )
    return built, config


def noise_attack(sigma):
    """An evaluation "attack" adding N(0, sigma^2) noise: the base classifier's noisy accuracy."""
    from sat_tf import attacks

    def add_noise(logits_fn, x, y, *, seed=None):
        del logits_fn, y
        return x + attacks.sample_noise(x, 1, sigma, seed)[:, 0]

    return add_noise
