"""sat_tf: Smooth Adversarial Training and sibling robustness methods for TF2 / Keras 3.

The repository keeps `models/` and `attacks/` at the top level (fixed layout) but
installs exactly one top-level package, `sat_tf`; the two folders are remapped to
`sat_tf.models` and `sat_tf.attacks` (as Keras maps `keras/src`). PEP 660 editable
installs honour the remap, which is why pyproject.toml declares a build system.
"""

from setuptools import find_packages, setup

setup(
    name="sat-tf",
    version="0.1.0",
    description="Smooth Adversarial Training (SAT) for TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["sat_tf", "sat_tf.*"]), "sat_tf.models", "sat_tf.attacks"],
    package_dir={
        "sat_tf": "sat_tf",
        "sat_tf.models": "models",
        "sat_tf.attacks": "attacks",
    },
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.0",
        "absl-py",
        "ml_collections",  # config files and --config.* overrides of launch/train.py; sat_tf.config
        "numpy",
        "scipy",
        "scikit-learn",
        "matplotlib",
        "tensorboard",  # TF 2.21 no longer pulls it in; tf.summary needs it
        "tensorflow-datasets",
        # tensorflow-datasets 4.9.10 imports it without declaring it.
        "importlib_resources",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",  # the suite runs on both cores (-n 2), one test file per worker
            "ruff==0.17.6",  # lint + format (pyproject.toml [tool.ruff]); pinned: formatting changes between releases
            "scikit-image",  # real sample photos for the ImageNet pipeline tests
            "nbclient",  # notebooks are executed in CI
            "nbformat",
            "ipykernel",
        ],
        "notebooks": ["jupyter", "nbconvert"],
        # Independent references for the cross-check tests and benchmarks: the PyTorch twin (local CPU wheel)
        # and Croce & Hein's AutoAttack (`pyautoattack` declares no dependencies, so it pulls nothing else).
        "crosscheck": ["torch==2.13.0", "pyautoattack==0.2.0"],
    },
)
