"""The latency routine finds the emulator's hidden lag from the light alone."""

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration.latency import measure_latency
from opu_driver.errors import AcquisitionError, InvalidInputError
from tests.support import SMALL_SIM, small_sim


@pytest.mark.parametrize("lag", [0, 1, 5])
def test_latency_recovers_the_hidden_lag(lag):
    with opu_driver.open(small_sim(f"seed=2&lag={lag}")) as opu:
        result = measure_latency(opu)
        assert result.lag_frames == lag == opu.emulator.ground_truth.lag_frames
        assert result.header_lag_frames == lag
        assert result.peak_correlation > 0.9 and result.second_correlation < 0.6
        # the Opu still projects correctly afterwards
        X = np.ones((3, 64), dtype=np.uint8)
        assert opu.transform(X, 256).mean() > 0


def test_no_light_is_an_error_not_a_lag():
    with opu_driver.open(small_sim("seed=2"), laser_on=False) as opu:
        with pytest.raises(AcquisitionError, match="no clear lag"):
            measure_latency(opu)


def test_bad_arguments_are_refused():
    with opu_driver.open(SMALL_SIM) as opu:
        sent = opu.link_counters.bytes_sent
        for kwargs in ({"n_frames": 4}, {"max_lag_frames": 0}, {"n_frames": 10, "max_lag_frames": 10}):
            with pytest.raises(InvalidInputError):
                measure_latency(opu, **kwargs)
        assert opu.link_counters.bytes_sent == sent


def test_opu_calibrate_latency_json(capsys):
    import json

    from opu_tools.cli import main

    assert main(["calibrate", "latency", "--url", small_sim("lag=2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"]["latency"]["lag_frames"] == 2
