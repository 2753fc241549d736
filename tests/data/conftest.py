"""The data tests use the session fixtures of tests/conftest.py (moto S3, Fashion-MNIST)."""

import pytest


@pytest.fixture(scope="session")
def fmnist(fashion_mnist):
    return fashion_mnist
