"""One error mapping for every backend: the same driver failure raises the same dfa_client error class (and kind)
from the in-process backend (``sim://``) and from the OPU service (``tcp://``).

The failure is injected into one open Opu that both backends use: the in-process projector calls its
``linear_transform``, the service its ``linear_transform_many``; both raise the driver error under test.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import dfa_client
import opu_driver
from dfa_client import errors as client
from dfa_client.errors import error_from_kinds, kind_chain
from opu_driver import errors as driver
from opu_driver.service import OpuService
from tests.support import small_sim

URL = small_sim("noise=0&seed=5")
N_FEATURES, N_COMPONENTS = 12, 30


class _SlowPipeTimeout(driver.CommunicationTimeoutError):
    """A driver error class the mapping table does not name: it is mapped by its bases."""


# driver failure -> (client class, kind the client error carries or None)
CASES = {
    "CommunicationTimeoutError": (driver.CommunicationTimeoutError, client.DeviceTimeoutError),
    "InterlockError": (driver.InterlockError, client.DeviceError),
    "InvalidInputError": (driver.InvalidInputError, client.InvalidInputError),
    "ConfigurationError": (driver.ConfigurationError, client.InvalidInputError),
    "DeviceNotFoundError": (driver.DeviceNotFoundError, client.DeviceUnavailableError),
    "ConnectionLostError": (driver.ConnectionLostError, client.DeviceUnavailableError),
    "CorruptPacketError": (driver.CorruptPacketError, client.DeviceError),
    "DroppedFramesError": (driver.DroppedFramesError, client.DeviceError),
    "_SlowPipeTimeout": (_SlowPipeTimeout, client.DeviceTimeoutError),
}


@pytest.fixture(scope="module")
def opu() -> Iterator[opu_driver.Opu]:
    with opu_driver.open(URL) as opened:
        yield opened


@pytest.fixture(scope="module")
def service(opu) -> Iterator[OpuService]:
    with OpuService(URL, opu=opu) as svc:
        yield svc


@pytest.fixture(scope="module")
def projectors(opu, service) -> Iterator[dict[str, dfa_client.Projector]]:
    host, port = service.address
    made = {
        "local": dfa_client.connect(URL, N_COMPONENTS, n_features=N_FEATURES, opu=opu),
        "tcp": dfa_client.connect(f"tcp://{host}:{port}", N_COMPONENTS, n_features=N_FEATURES, retries=0),
    }
    yield made
    for projector in made.values():
        projector.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_driver_failure_is_the_same_client_error_on_every_backend(opu, projectors, name) -> None:
    driver_class, client_class = CASES[name]
    E = np.random.default_rng(3).normal(size=(2, N_FEATURES))
    expected = projectors["local"].project(E)  # both work before the failure

    def fail(*args, **kwargs):
        raise driver_class(f"injected {name}")

    raised: dict[str, BaseException] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(opu, "linear_transform", fail)
        patch.setattr(opu, "linear_transform_many", fail)
        for backend, projector in projectors.items():
            with pytest.raises(client_class) as caught:
                projector.project(E)
            raised[backend] = caught.value
    local, tcp = raised["local"], raised["tcp"]
    assert type(local) is type(tcp) is client_class
    assert getattr(local, "kind", None) == getattr(tcp, "kind", None)
    if isinstance(local, client.ServiceError):
        assert local.kind == name  # the driver's own class name, the most specific
    assert f"injected {name}" in str(local) and f"injected {name}" in str(tcp)
    # the failure was the request's only: both backends serve the next one, the tcp one on the same connection
    np.testing.assert_array_equal(projectors["tcp"].project(E), expected)
    np.testing.assert_array_equal(projectors["local"].project(E), expected)
    assert projectors["tcp"].reconnects == 0


def test_the_mapping_keeps_the_documented_base_classes() -> None:
    timeout = error_from_kinds(kind_chain(driver.CommunicationTimeoutError("t"), driver.OpuError), "t")
    assert isinstance(timeout, client.RequestTimeoutError) and isinstance(timeout, client.ServiceError)
    gone = error_from_kinds(["DeviceNotFoundError", "DeviceError", "OpuError"], "g")
    assert isinstance(gone, client.ConnectionFailedError) and gone.kind == "DeviceNotFoundError"
    large = error_from_kinds(["RequestTooLarge"], "r")
    assert isinstance(large, client.InvalidInputError) and isinstance(large, client.ServiceError)
    unknown = error_from_kinds(["SomethingNew"], "u")
    assert type(unknown) is client.ServiceError and unknown.kind == "SomethingNew"
    assert type(error_from_kinds(["ProtocolError"], "p")) is client.ServiceError  # the service's own, id 0
