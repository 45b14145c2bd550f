"""One Opu shared by several threads: calls are serialised, never interleaved on the wire."""

import threading

import numpy as np

import opu_driver
from tests.support import small_sim


def test_threads_sharing_one_opu_each_get_their_own_results():
    # noise=0: every call's result is a function of its input alone, so a thread's result must equal the
    # result of the same input computed alone, whatever the other threads do meanwhile.
    with opu_driver.open(small_sim("noise=0&seed=9"), calibration=None, pixel_format="MONO12", exposure_us=200) as opu:
        rng = np.random.default_rng(0)
        binary = [rng.integers(0, 2, size=(int(rng.integers(1, 40)), 48), dtype=np.uint8) for _ in range(6)]
        ternary = [rng.choice([-1, 0, 1], size=(int(rng.integers(1, 20)), 24)).astype(np.int8) for _ in range(6)]
        alone_t = [opu.transform(X, 300) for X in binary]
        alone_l = [opu.linear_transform(E, 200) for E in ternary]
        sent_alone = opu.counters.frames_sent
        results: dict[tuple[str, int], np.ndarray] = {}
        failures: list[BaseException] = []

        def work(kind: str, i: int) -> None:
            try:
                for _ in range(3):
                    if kind == "transform":
                        results[(kind, i)] = opu.transform(binary[i], 300)
                    else:
                        results[(kind, i)] = opu.linear_transform(ternary[i], 200)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(kind, i)) for i in range(6) for kind in ("transform", "linear")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads) and not failures
        for i in range(6):
            np.testing.assert_array_equal(results[("transform", i)], alone_t[i])
            np.testing.assert_array_equal(results[("linear", i)], alone_l[i])
        counters = opu.counters
        # every frame sent was matched to its request: none lost, none taken by another thread's sequence
        assert counters.frames_matched == counters.frames_sent and counters.frames_discarded == 0
        assert counters.frames_sent > sent_alone
