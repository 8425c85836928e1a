r"""Empirical robustness of a smoothed classifier under SmoothAdv's attacks.

For every selected test image: draw m_test noise vectors, attack the smoothed
soft classifier (PGD or DDN on -log mean_i softmax(f(x + delta + n_i)),
L2 budget in the reference's 1/256 units), then run Cohen's PREDICT on the
adversarial point with N fresh noise samples (two-sided binomial test at
--alpha, abstentions count as wrong). This is SmoothAdv's `code/predict.py`:
it gives an upper bound on the smoothed classifier's robust accuracy (the
certificates of launch/certify.py give the lower bound).

    python launch/train.py --config=launch/configs/digits_gaussian.py --workdir=runs/digits_noise_0.25
    python launch/predict.py --workdir=runs/digits_noise_0.25 --N=1000 \
      --epsilon=64 --num_steps=20 --num_noise_vec=32 --skip=4

The SmoothAdv README protocol (CIFAR-10): --N=1000 --attack=pgd
--epsilon={64,127,255} --num_steps=20 --num_noise_vec=32. Writes a TSV
`idx label predict basePredict correct time` (the reference's header;
basePredict is the noiseless base prediction on the adversarial point),
a JSON summary next to it, and prints the empirical accuracy.

Deviations: the attack's noise and the PREDICT noise are seeded per image
from --seed (the reference seeds torch once); --no-grad-attack is not
offered. As the reference, DDN's gamma is recomputed from the budget,
gamma = 1 - (3/510/eps)^(1/steps), whenever eps > 0.
"""

import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_run_flags(workdir="runs/digits_noise_0.25", seed=0, split_help="Split to attack.")
flags.DEFINE_float(
    "sigma", None, "Noise sigma of the smoothed classifier (default: the run's config.objective.noise_sd)."
)
flags.DEFINE_integer("skip", 1, "Attack every skip-th image.")
flags.DEFINE_integer("max", -1, "Stop before image index max (-1: all).")
flags.DEFINE_integer("N", 100000, "Noise samples of PREDICT.")
flags.DEFINE_float("alpha", 0.001, "PREDICT abstains when the binomial test's p-value exceeds alpha.")
flags.DEFINE_integer("batch", 1000, "Noise samples per step (per replica).")
flags.DEFINE_enum("attack", "pgd", ["pgd", "ddn"], "SmoothAdv attack.")
flags.DEFINE_float("epsilon", 64.0, "L2 budget in 1/256 units (64 -> 0.25); 0: no attack.")
flags.DEFINE_integer("num_steps", 100, "Attack steps.")
flags.DEFINE_integer("num_noise_vec", 1, "m_test: noise draws the attack averages over.")
flags.DEFINE_bool("base_attack", False, "Attack the base classifier (no noise in the attack).")
flags.DEFINE_float("init_norm_ddn", 256.0, "DDN's initial norm, 1/256 units.")
flags.DEFINE_float("gamma_ddn", 0.05, "DDN's gamma when --epsilon=0 (else recomputed, as the reference).")
flags.DEFINE_string(
    "outfile", None, "TSV path (default: <workdir>/predict/<attack>_<eps>_noise_<sigma>_mtest_<m>.tsv)."
)

HEADER = "idx\tlabel\tpredict\tbasePredict\tcorrect\ttime"


def validate():
    common.require(
        FLAGS.workdir,
        "--workdir is required: a directory written by launch/train.py --config=launch/configs/digits_gaussian.py",
    )
    common.require(FLAGS.skip >= 1, f"--skip must be >= 1, got {FLAGS.skip}")
    common.require(FLAGS.N >= 1, f"--N must be >= 1, got {FLAGS.N}")
    common.require(0 < FLAGS.alpha < 1, f"--alpha must be in (0, 1), got {FLAGS.alpha}")
    common.require(FLAGS.batch >= 1, f"--batch must be >= 1, got {FLAGS.batch}")
    common.require(
        0 <= FLAGS.epsilon <= 4096, f"--epsilon must be in [0, 4096] (1/256 units: 64 means 0.25), got {FLAGS.epsilon}"
    )
    common.require(FLAGS.num_steps >= 1, f"--num_steps must be >= 1, got {FLAGS.num_steps}")
    common.require(1 <= FLAGS.num_noise_vec <= 4096, f"--num_noise_vec must be in [1, 4096], got {FLAGS.num_noise_vec}")
    if FLAGS.sigma is not None:
        common.require(0 < FLAGS.sigma <= 10, f"--sigma must be in (0, 10] ([0, 1] pixel units), got {FLAGS.sigma}")
    common.require(FLAGS.max == -1 or FLAGS.max >= 1, f"--max must be -1 (all) or >= 1, got {FLAGS.max}")
    common.require(
        0 < FLAGS.init_norm_ddn <= 4096,
        f"--init_norm_ddn must be in (0, 4096] (1/256 units), got {FLAGS.init_norm_ddn}",
    )
    common.require(0 < FLAGS.gamma_ddn < 1, f"--gamma_ddn must be in (0, 1), got {FLAGS.gamma_ddn}")
    common.check_run_flags(FLAGS)


def smoothing_sigma(run_config):
    if FLAGS.sigma is not None:
        return FLAGS.sigma
    sigma = run_config.get("smoothing", {}).get("noise_sd", 0.0)
    common.require(
        sigma > 0,
        "--sigma is required: the run was not trained with a smoothing objective (no objective.noise_sd in run_config.json)",
    )
    return sigma


def attack_kwargs():
    """The attack's keyword arguments in [0, 1] units, as the reference's predict.py builds them."""
    eps = FLAGS.epsilon / 256.0
    kwargs = {"eps": eps, "steps": FLAGS.num_steps}
    if FLAGS.attack == "ddn":
        gamma = 1 - (3 / 510 / eps) ** (1 / FLAGS.num_steps) if eps > 0 else FLAGS.gamma_ddn
        kwargs.update(init_norm=FLAGS.init_norm_ddn / 256.0, gamma=gamma)
    return kwargs


def main(argv):
    del argv
    validate()
    import tensorflow as tf

    from sat_tf import attacks, certification, distribute, files
    from sat_tf.certification import logs as certify_logs

    run_config = common.load_run_config(FLAGS.workdir)
    sigma = smoothing_sigma(run_config)
    dataset = FLAGS.dataset or run_config["dataset"]
    common.check_run_data(
        run_config, dataset=dataset, split=FLAGS.split, data_dir=FLAGS.data_dir or run_config.get("data_dir")
    )
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    model, run_config = common.restore_model(FLAGS.workdir, FLAGS.checkpoint)
    split = common.RunSplit(
        run_config,
        dataset=dataset,
        split=FLAGS.split,
        data_dir=FLAGS.data_dir or run_config.get("data_dir"),
        image_size=model.input_shape[1],
    )
    logits_fn = lambda z: model(z, training=False)  # noqa: E731  one callable: one trace
    smooth = certification.Smooth(logits_fn, split.num_classes, sigma, batch_size=FLAGS.batch, strategy=strategy)
    kwargs = attack_kwargs()
    attack = attacks.SMOOTHADV_ATTACKS[FLAGS.attack]
    m = FLAGS.num_noise_vec

    @tf.function
    def adversarial(x, y, seed):
        noise = None if FLAGS.base_attack else attacks.sample_noise(x, m, sigma, seed)
        x_adv = attack(logits_fn, x, y, noise=noise, seed=seed, **kwargs) if kwargs["eps"] > 0 else x
        return x_adv, tf.argmax(logits_fn(x_adv), -1, output_type=tf.int32)

    outfile = FLAGS.outfile or os.path.join(
        FLAGS.workdir, "predict", f"{FLAGS.attack}_{FLAGS.epsilon / 256:.3f}_noise_{sigma:.3}_mtest_{m}.tsv"
    )
    files.makedirs_for(outfile)
    total = split.size
    last = total if FLAGS.max < 0 else min(total, FLAGS.max)
    images = split.batches(1, limit=last)
    selected = len(range(0, last, FLAGS.skip))
    print(
        f"predict: {FLAGS.attack} eps={kwargs['eps']:.4f} steps={FLAGS.num_steps} m_test={m} sigma={sigma:g} "
        f"N={FLAGS.N} alpha={FLAGS.alpha} on {selected} {dataset}/{FLAGS.split} images -> {outfile}",
        flush=True,
    )
    correct, done, start = 0, 0, time.perf_counter()
    with files.open_to_stream(outfile) as f:
        print(HEADER, file=f, flush=True)
        for index, (x, y) in enumerate(images):
            if index == last:
                break
            if index % FLAGS.skip:
                continue
            t0 = time.perf_counter()
            seed = tf.constant([FLAGS.seed, index], tf.int32)
            x_adv, base = adversarial(x, y, seed)
            label = int(y[0])
            prediction = smooth.predict(x_adv[0], FLAGS.N, FLAGS.alpha, seed=certify_logs.image_seed(FLAGS.seed, index))
            hit = int(prediction == label)
            elapsed = datetime.timedelta(seconds=time.perf_counter() - t0)
            print(f"{index}\t{label}\t{prediction}\t{int(base[0])}\t{hit}\t{elapsed}", file=f, flush=True)
            correct, done = correct + hit, done + 1
            rate = done * FLAGS.N / (time.perf_counter() - start)
            common.progress_line(done, selected, f"empirical accuracy {correct / done:.4f}  {rate:,.0f} samples/s")
    summary = {
        "empirical_accuracy": correct / max(done, 1),
        "images": done,
        "sigma": sigma,
        "attack": FLAGS.attack,
        "epsilon": kwargs["eps"],
        "epsilon_256": FLAGS.epsilon,
        "num_steps": FLAGS.num_steps,
        "m_test": m,
        "base_attack": FLAGS.base_attack,
        "N": FLAGS.N,
        "alpha": FLAGS.alpha,
        "seed": FLAGS.seed,
        "workdir": FLAGS.workdir,
        "seconds": round(time.perf_counter() - start, 2),
    }
    files.write_json(os.path.splitext(outfile)[0] + ".json", summary, indent=2)
    print(
        f"empirical accuracy of the smoothed classifier: {summary['empirical_accuracy']:.4f} "
        f"({correct}/{done}) under {FLAGS.attack} eps={kwargs['eps']:.3f}; {outfile}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    common.run(main)
