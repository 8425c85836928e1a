"""Shared pytest set-up: TF backend, quiet logs, and the `slow` gate."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run_slow", action="store_true", default=False, help="run tests marked slow"
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s; needs --run_slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run_slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run_slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
