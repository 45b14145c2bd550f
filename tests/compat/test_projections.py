"""The ``OPUMap`` wrappers of the lightonml front: the scikit-learn transformer and the PyTorch module project what
the front projects, fit lazily, and keep lightonml's parameters. The PyTorch part skips without PyTorch (and fails
instead with OPU_REQUIRE_TORCH=1, as CI sets it)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline

from opu_driver.compat.lightonml import OPU
from opu_driver.compat.projections.sklearn import OPUMap
from opu_driver.errors import ConfigurationError
from tests.support import small_sim

N_FEATURES, N_OUT = 64, 200


@pytest.fixture(scope="module")
def front():
    with OPU(n_components=N_OUT, url=small_sim("noise=0&seed=9")) as opu:
        yield opu


def _binary(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 2, size=shape, dtype=np.uint8)


def test_the_sklearn_map_projects_what_the_front_projects(front):
    X = _binary((12, N_FEATURES), seed=1)
    projection = OPUMap(n_components=N_OUT, opu=front)
    Y = projection.fit_transform(X)
    assert type(Y) is np.ndarray and Y.shape == (12, N_OUT) and Y.dtype == np.uint8
    np.testing.assert_array_equal(Y, front.opu.transform(X, N_OUT))
    linear = OPUMap(n_components=N_OUT, opu=front, linear=True).fit(n_features=N_FEATURES)
    assert linear.transform(X).dtype == np.float32
    params = projection.get_params()
    assert params["n_components"] == N_OUT and params["ndims"] == 1 and params["linear"] is False
    twin = clone(projection).set_params(n_components=50)  # shares the OPU, not the number of outputs
    assert twin.n_components == 50 and projection.n_components == N_OUT
    assert twin.transform(X).shape == (12, 50) and projection.transform(X).shape == (12, N_OUT)


def test_the_sklearn_map_fits_lazily_takes_2d_and_packed_input_and_sits_in_a_pipeline(front):
    X = _binary((40, 8, 8), seed=2)
    labels = X[:, :4, :4].sum(axis=(1, 2)) > 8
    projection = OPUMap(n_components=N_OUT, opu=front, ndims=2)
    assert projection.transform(X).shape == (40, N_OUT)  # fitted on the input
    packed = np.packbits(X.reshape(40, -1), axis=1)
    packed_map = OPUMap(n_components=N_OUT, opu=front, ndims=2, packed=True, n_2d_features=(8, 8)).fit(packed)
    np.testing.assert_array_equal(packed_map.transform(packed), projection.transform(X))
    pipeline = make_pipeline(OPUMap(n_components=N_OUT, opu=front, ndims=2), RidgeClassifier()).fit(X, labels)
    assert pipeline.predict(X).shape == (40,)
    with pytest.raises(ConfigurationError):
        OPUMap(n_components=N_OUT, opu=front, ndims=3)


def test_the_torch_map_is_a_module_whose_output_is_detached(front):
    try:
        import torch
    except ImportError:
        if os.environ.get("OPU_REQUIRE_TORCH"):
            raise
        pytest.skip("PyTorch is not installed (the optional torch extra)")
    from opu_driver.compat.projections.torch import OPUMap as TorchOPUMap

    X = torch.from_numpy(_binary((6, N_FEATURES), seed=3))
    module = TorchOPUMap(n_components=N_OUT, opu=front)
    Y = module(X)
    assert isinstance(Y, torch.Tensor) and Y.dtype == torch.uint8 and not Y.requires_grad
    np.testing.assert_array_equal(Y.numpy(), front.opu.transform(X.numpy(), N_OUT))
    module.fit(n_features=N_FEATURES, online=True)
    np.testing.assert_array_equal(module(X).numpy(), Y.numpy())
    linear = TorchOPUMap(n_components=N_OUT, opu=front, linear=True)
    assert linear(X.float()).dtype == torch.float32
    assert "out_features=200" in repr(module)
