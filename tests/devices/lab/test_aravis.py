"""The Aravis camera backend against Aravis's own fake GigE Vision camera, served in this process on 127.0.0.1.

The fake (``Aravis.GvFakeCamera``) answers GVCP on UDP 3956 and streams GVSP like a camera; the backend reaches
it through the same Aravis code as a real GigE camera. Its image is a diagonal ramp shifted by the frame id, so
every buffer's pixels say which frame they are: pixel (x, y) of frame ``f`` is ``(x + y + f) % 255`` times
``1 + gain + log10(exposure_us / 10000)``, clamped to 0..255 and truncated (x and y counted inside the region).
Its frame id starts at 65,401 and wraps 65,535 -> 1; it free-runs at up to 1 kHz (AcquisitionFramePeriod >= 1000 us)
and, triggered, fires only on its software trigger (checked on a tick we set to 1 kHz): Line0 never fires. It
drops each GVSP packet with probability ``gvsp-lost-ratio`` and does not answer packet-resend requests.

Each test starts its own fake and stops it after, so the port is free for the next; the tests run one at a time.
Set OPU_REQUIRE_ARAVIS=1 (as CI does) to make a missing Aravis or PyGObject fail this file instead of skipping it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opu_driver.devices import Camera, make_rig
from opu_driver.devices.lab.frame_ids import ids_skipped_between
from opu_driver.errors import ConfigurationError, DeviceError, InvalidInputError, LibraryLoadError
from opu_driver.protocol import PixelFormat

try:
    from opu_driver.devices.lab.aravis import UNKNOWN_FRAME_ID, AravisCamera, load_aravis

    Aravis, GLib = load_aravis()
except LibraryLoadError as exc:
    if os.environ.get("OPU_REQUIRE_ARAVIS"):
        raise
    pytest.skip(f"Aravis 0.8 or PyGObject is not installed ({exc})", allow_module_level=True)

from opu_driver.devices.lab.parts import CameraBuffer, GrabSettings
from tests.devices.lab.support import write_rig
from tests.support.conformance import CameraConformance

GEV_MODULUS = 1 << 16
SERIAL = "OPUTEST1"


class FakeGv:
    """Holds the fake camera so that the test's teardown can drop the last reference (which stops it)."""

    def __init__(self) -> None:
        self.camera: Any = Aravis.GvFakeCamera.new("127.0.0.1", SERIAL)

    def set_lost_ratio(self, ratio: float) -> None:
        self.camera.set_property("gvsp-lost-ratio", ratio)

    def set_trigger_tick_hz(self, frequency_hz: float) -> None:
        self.camera.get_fake_camera().set_trigger_frequency(frequency_hz)


@pytest.fixture
def fake() -> Iterator[FakeGv]:
    holder = FakeGv()
    if not holder.camera.is_running():
        pytest.fail("the fake GigE Vision camera could not bind UDP 3956 on 127.0.0.1 (is another one running?)")
    yield holder
    holder.camera = None  # finalizing the fake joins its thread and closes its sockets


@pytest.fixture
def open_camera(fake: FakeGv) -> Iterator[Any]:
    """A factory of opened AravisCameras on the fake, all closed after the test."""
    opened: list[AravisCamera] = []

    def make(**kwargs: Any) -> AravisCamera:
        camera = AravisCamera("127.0.0.1", **kwargs)
        opened.append(camera)
        camera.open()
        return camera

    yield make
    for camera in opened:
        camera.close()


def fake_image(frame_id: int, width: int, height: int, exposure_us: int = 10_000, gain: float = 0.0) -> np.ndarray:
    """The image the fake makes for ``frame_id``, computed as its C code does (double arithmetic, then clamped
    and truncated to a byte)."""
    y, x = np.mgrid[0:height, 0:width]
    scale = 1.0 + gain + math.log10(exposure_us / 10_000.0)
    values = ((x + y + frame_id) % 255).astype(np.float64) * scale
    return np.clip(values, 0, 255).astype(np.uint8)


def mono8(x: int, y: int, width: int, height: int, line: str | None = None, **kw: Any) -> GrabSettings:
    values: dict[str, Any] = {"exposure_us": 10_000, "gain": 0.0, "pixel_format": PixelFormat.MONO8}
    values.update(kw)
    return GrabSettings(x=x, y=y, width=width, height=height, trigger_line=line, **values)


def read_one(camera: AravisCamera, timeout_s: float = 2.0) -> CameraBuffer:
    buffer = camera.read(timeout_s)
    assert buffer is not None, f"no buffer within {timeout_s} s"
    return buffer


def frames_not_read(buffers: list[CameraBuffer]) -> list[int]:
    """Frames the camera made but no buffer shows, between each two buffers with known ids.

    A damaged buffer whose leader packet was lost has no id of its own; it fills one id of the gap it sits in.
    """
    known = [i for i, b in enumerate(buffers) if b.frame_id != UNKNOWN_FRAME_ID]
    assert known and known[0] == 0, "the first buffer's id must be known"
    assert all(buffers[i].detail.endswith("id unknown") for i in range(len(buffers)) if i not in set(known))
    missing = []
    for i, j in zip(known, known[1:], strict=False):
        skipped = ids_skipped_between(buffers[i].frame_id, buffers[j].frame_id, GEV_MODULUS, (0,))
        missing.append(skipped - (j - i - 1))
    assert min(missing, default=0) >= 0, "an id read twice or out of order"
    return missing


# ---------------------------------------------------------------------------------------------------- open, settings
def test_open_describes_the_fake(open_camera: Any) -> None:
    info = open_camera().open()
    assert (info.model, info.serial_number, info.width, info.height) == ("Fake", SERIAL, 2048, 2048)
    assert info.pixel_formats == (PixelFormat.MONO8,)  # the fake has Mono8 and Mono16 of the five mono formats
    assert (info.frame_id_modulus, info.skipped_ids) == (GEV_MODULUS, (0,))
    assert info.timestamp_tick_ns == 1.0  # GevTimestampTickFrequency 1 GHz (the values are whole microseconds)


@pytest.mark.slow  # Aravis gives up on the address after its control timeout
def test_no_camera_at_the_address_is_device_not_found(fake: FakeGv) -> None:
    from opu_driver.errors import DeviceNotFoundError

    with pytest.raises(DeviceNotFoundError):
        AravisCamera("127.0.0.2").open()


def test_configure_reads_back_region_exposure_and_gain_and_the_pixels_follow(open_camera: Any) -> None:
    camera = open_camera(free_run_frame_rate_hz=1000.0)
    # exposure 100 ms doubles the ramp (1 + 0 + log10(10)); 1 ms with gain 1 leaves it as it is (1 + 1 - 1)
    for exposure_us, gain in ((100_000, 0.0), (1_000, 1.0)):
        asked = mono8(16, 8, 256, 8, exposure_us=exposure_us, gain=gain)
        assert camera.configure(asked) == asked
        assert camera.read_settings() == asked
        camera.start()
        buffer = read_one(camera)
        camera.stop()
        assert buffer.complete and buffer.pixels is not None
        assert buffer.pixels.shape == (8, 256) and buffer.pixels.dtype == np.uint8
        expected = fake_image(buffer.frame_id, 256, 8, exposure_us, gain)
        np.testing.assert_array_equal(buffer.pixels, expected)
        doubled = exposure_us == 100_000
        assert np.array_equal(expected, fake_image(buffer.frame_id, 256, 8)) != doubled
        assert buffer.pixels.min() < 100


def test_configure_returns_what_the_camera_rounded(open_camera: Any) -> None:
    camera = open_camera()
    held = camera.configure(mono8(0, 0, 32, 16, gain=2.5))
    assert held.gain == 2.0  # the fake's gain is the integer GainRaw
    assert held == camera.read_settings()


@pytest.mark.parametrize(
    "regions",
    [
        [(0, 0, 2048, 2048), (2000, 2016, 48, 32), (0, 0, 1024, 16)],
        [(1024, 0, 1024, 8), (0, 2040, 2048, 8), (1000, 1000, 8, 8)],
    ],
)
@pytest.mark.slow
def test_regions_move_across_the_sensor(open_camera: Any, regions: list[tuple[int, int, int, int]]) -> None:
    camera = open_camera(free_run_frame_rate_hz=1000.0)
    for x, y, width, height in regions:
        asked = mono8(x, y, width, height)
        assert camera.configure(asked) == asked
        camera.start()
        buffer = read_one(camera)
        camera.stop()
        assert buffer.complete and buffer.pixels is not None
        np.testing.assert_array_equal(buffer.pixels, fake_image(buffer.frame_id, width, height))


@pytest.mark.parametrize(
    "change",
    [
        {"pixel_format": PixelFormat.MONO10},
        {"pixel_format": PixelFormat.MONO12},
        {"pixel_format": PixelFormat.MONO10P},
        {"pixel_format": PixelFormat.MONO12P},
        {"exposure_us": 5},  # the fake's ExposureTimeAbs is 10 .. 10,000,000 us
        {"gain": 10.5},  # GainRaw 0 .. 10
        {"x": 2000},  # 64 wide from 2000 leaves the 2048-pixel sensor
        {"height": 2049},
        {"trigger_line": "Line1"},  # the fake's lines are Line0 and Software: refused while writing
    ],
)
def test_refused_values_leave_the_previous_settings(open_camera: Any, change: dict[str, Any]) -> None:
    camera = open_camera()
    before = camera.configure(mono8(16, 8, 64, 32, exposure_us=20_000, gain=1.0))
    values = {**before.__dict__, "exposure_us": 30_000, "gain": 3.0, "x": 32, "y": 4, **change}
    with pytest.raises(ConfigurationError):
        camera.configure(GrabSettings(**values))
    assert camera.read_settings() == before


@pytest.mark.parametrize(
    "change",
    [{"width": 0}, {"x": -1}, {"exposure_us": 0}, {"exposure_us": 1.5}, {"gain": -1.0}, {"gain": float("nan")}]
    + [{"trigger_line": ""}, {"trigger_line": "Line 1"}, {"pixel_format": 1}],
)
def test_malformed_settings_are_refused_before_anything_is_sent(open_camera: Any, change: dict[str, Any]) -> None:
    camera = open_camera()
    before = camera.configure(mono8(16, 8, 64, 32))
    with pytest.raises(InvalidInputError):
        camera.configure(GrabSettings(**{**before.__dict__, **change}))
    assert camera.read_settings() == before


def test_calls_out_of_order_are_typed_errors(open_camera: Any) -> None:
    camera = open_camera()
    with pytest.raises(DeviceError):
        camera.read(0.1)
    camera.configure(mono8(0, 0, 16, 16))
    camera.start()
    with pytest.raises(InvalidInputError):
        camera.read(-1.0)
    camera.close()
    camera.close()
    with pytest.raises(DeviceError):
        camera.start()
    camera.stop()


# --------------------------------------------------------------------------------------------------- acquisition
def _image_table(width: int, height: int) -> np.ndarray:
    """The fake's image for every frame id modulo 255 (the ramp repeats every 255 ids)."""
    return np.stack([fake_image(k, width, height) for k in range(255)])


@pytest.mark.slow
def test_ten_thousand_free_run_frames_each_the_image_of_its_own_id(open_camera: Any) -> None:
    width, height, n_frames = 64, 32, 10_000
    camera = open_camera(n_buffers=64, free_run_frame_rate_hz=1000.0)
    camera.configure(mono8(0, 0, width, height))
    table = _image_table(width, height)
    camera.start()
    ids: list[int] = []
    wrong: list[int] = []
    device_times: list[int] = []
    for _ in range(n_frames):
        buffer = read_one(camera)
        assert buffer.complete, buffer.detail
        ids.append(buffer.frame_id)
        device_times.append(buffer.device_time_ns)
        if not np.array_equal(buffer.pixels, table[buffer.frame_id % 255]):
            wrong.append(buffer.frame_id)
    counters = camera.counters()
    assert wrong == []
    assert ids[0] == 65_401  # the fake starts near the wrap to show counter bugs early
    wrap = ids.index(65_535)
    assert ids[wrap + 1] == 1
    gaps = [ids_skipped_between(a, b, GEV_MODULUS, (0,)) for a, b in zip(ids, ids[1:], strict=False)]
    assert sum(gaps) == 0
    assert np.all(np.diff(device_times) > 0)
    assert counters.failures == 0 and counters.missing_frames == 0 and counters.underruns == 0
    assert counters.completed >= n_frames


@pytest.mark.slow
def test_packet_loss_is_detected_and_never_passes_as_pixels(fake: FakeGv, open_camera: Any) -> None:
    width, height, n_frames, lost_ratio = 256, 64, 2_000, 0.02
    packet_size = 1400
    camera = open_camera(
        n_buffers=64,
        packet_size=packet_size,
        packet_resend=False,
        free_run_frame_rate_hz=1000.0,
        frame_retention_us=50_000,
    )
    camera.configure(mono8(0, 0, width, height))
    table = _image_table(width, height)

    # A frame is a leader, the payload cut into packets of GevSCPSPacketSize less the IP, UDP and GVSP headers
    # (20 + 8 + 8 bytes), and a trailer.
    packets_per_frame = 2 + math.ceil(width * height / (packet_size - 36))
    assert packets_per_frame > 10

    fake.set_lost_ratio(lost_ratio)
    camera.start()
    buffers = [read_one(camera) for _ in range(n_frames)]
    fake.set_lost_ratio(1.0)  # silence: frames under way close (as timeouts), nothing new comes
    while (buffer := camera.read(0.3)) is not None:
        buffers.append(buffer)
    counters = camera.counters()
    camera.stop()

    complete = [b for b in buffers if b.complete]
    damaged = [b for b in buffers if not b.complete]
    wrong = [b.frame_id for b in complete if not np.array_equal(b.pixels, table[b.frame_id % 255])]
    assert wrong == []
    assert all(b.pixels is None and b.detail.startswith("status ") for b in damaged)
    assert any(b.frame_id == UNKNOWN_FRAME_ID for b in damaged)  # 1 frame in 50 loses its leader
    not_read = frames_not_read(buffers)

    # The library's counts agree with the buffers read (each buffer closed once: complete or failed).
    assert counters.completed == len(complete)
    assert counters.failures == len(damaged)
    assert counters.timeouts == sum(b.detail.startswith("status timeout") for b in damaged)
    assert counters.missing_frames == sum(n > 0 for n in not_read)
    assert counters.underruns == 0
    assert counters.missing_packets >= len(damaged)

    # And the losses the stream saw are the injected ones: the packet loss estimated from the packets received
    # (binomial, 1 in 50 of ~30,000 packets: sd 0.0008) and the fraction of frames that lost at least one packet.
    frames_made = len(buffers) + sum(not_read) - 1  # the last frame was cut short by the silence
    received = counters.received_packets
    seen_ratio = 1.0 - received / (frames_made * packets_per_frame)
    assert abs(seen_ratio - lost_ratio) < 0.005
    damaged_ratio = sum(not b.complete for b in buffers[:n_frames]) / n_frames
    expected = 1.0 - (1.0 - lost_ratio) ** packets_per_frame
    assert abs(damaged_ratio - expected) < 5 * math.sqrt(expected * (1 - expected) / n_frames)


def test_a_slow_reader_loses_whole_frames_and_the_id_gaps_count_them(open_camera: Any) -> None:
    width, height = 64, 32
    camera = open_camera(n_buffers=4, free_run_frame_rate_hz=1000.0)
    camera.configure(mono8(0, 0, width, height))
    table = _image_table(width, height)
    camera.start()
    buffers = [read_one(camera) for _ in range(20)]
    time.sleep(0.3)  # a few hundred frames come (the fake shares two cores with us) while 4 buffers wait
    buffers += [read_one(camera) for _ in range(40)]
    counters = camera.counters()
    not_read = frames_not_read(buffers)
    assert sum(not_read) >= 20
    assert counters.underruns > 0
    assert counters.missing_frames == sum(n > 0 for n in not_read)
    assert all(np.array_equal(b.pixels, table[b.frame_id % 255]) for b in buffers if b.complete)
    assert sum(b.complete for b in buffers) >= len(buffers) - 2 * counters.missing_frames


@pytest.mark.slow
def test_ten_thousand_triggered_frames_one_per_trigger_each_the_image_of_its_own_id(
    fake: FakeGv, open_camera: Any
) -> None:
    """Software triggers in bursts of 8, 0.5 ms apart (the fake looks at its trigger every 50 us here): each
    frame read is the image of its own id, ids follow one another across the wrap, and no frame is made and lost.
    A trigger the fake sees together with the one before (its thread held off the CPU for 0.5 ms) makes no frame
    and takes no id: it shows as a trigger without a frame, never as a gap or a wrong image."""
    width, height, n_frames, burst = 32, 16, 10_000, 8
    fake.set_trigger_tick_hz(20_000.0)  # 25 Hz by default
    camera = open_camera(n_buffers=32)
    assert camera.configure(mono8(0, 0, width, height, line="Software")).trigger_line == "Software"
    camera.start()
    assert camera.read(0.05) is None
    table = _image_table(width, height)
    ids: list[int] = []
    wrong: list[int] = []
    triggers = 0
    while len(ids) < n_frames:
        for _ in range(burst):
            camera.software_trigger()
            triggers += 1
            time.sleep(0.0005)
        for _ in range(burst):
            buffer = camera.read(0.2)
            if buffer is None:
                break
            assert buffer.complete, buffer.detail
            if not np.array_equal(buffer.pixels, table[buffer.frame_id % 255]):
                wrong.append(buffer.frame_id)
            ids.append(buffer.frame_id)
    assert camera.read(0.05) is None  # no trigger, no frame
    assert wrong == []
    assert ids[0] == 65_401 and ids[ids.index(65_535) + 1] == 1  # wrapped, skipping 0
    assert sum(ids_skipped_between(a, b, GEV_MODULUS, (0,)) for a, b in zip(ids, ids[1:], strict=False)) == 0
    assert camera.counters().completed == len(ids) and camera.counters().missing_frames == 0
    assert len(ids) <= triggers <= len(ids) * 1.01  # merged triggers are rare


def test_armed_on_a_line_that_never_fires_reads_nothing_within_the_timeout(open_camera: Any) -> None:
    camera = open_camera()
    camera.configure(mono8(0, 0, 32, 16, line="Line0"))
    camera.start()
    started = time.monotonic()
    assert camera.read(0.3) is None
    waited_s = time.monotonic() - started
    assert 0.29 <= waited_s < 1.0
    assert camera.counters().completed == 0


def _open_fds_and_threads() -> tuple[int, int]:
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))


@pytest.mark.slow
def test_start_stop_cycles_release_streams_and_buffers(open_camera: Any) -> None:
    camera = open_camera(n_buffers=8, free_run_frame_rate_hz=1000.0)
    camera.configure(mono8(0, 0, 64, 32))
    camera.start()
    camera.stop()
    fds, threads = _open_fds_and_threads()
    for _ in range(25):
        camera.start()
        camera.start()  # idempotent while armed: no second stream
        for _ in range(4):
            assert read_one(camera).complete
            assert sum(camera.queued_buffers()) <= 8
        camera.stop()
        assert camera.queued_buffers() == (0, 0)
    assert _open_fds_and_threads() == (fds, threads)  # each stream's socket and thread went with it
    # Frames that come after the reads of a cycle find every buffer full (underruns): the bound holds.
    assert camera.counters().completed >= 100


# ------------------------------------------------------------------------------------------- the conformance suite
class TestAravisCameraOfALabRig(CameraConformance):
    """The camera suite on a rig whose camera is the fake, reached through Aravis (armed on Line0, which the fake
    never fires: the suite's frames that never come). The suite of the parts together needs a DMD's trigger-out
    on the camera's line, which the fake does not have; on a rig with a real camera, run it with
    ``pytest tests/devices/test_hardware_conformance.py --hardware rig://RIG.toml``."""

    @pytest.fixture
    def camera(self, fake: FakeGv, tmp_path: Path) -> Iterator[Camera]:
        aravis = 'backend = "aravis"\ndevice_id = "127.0.0.1"\ntrigger_line = "Line0"'
        path = write_rig(tmp_path, camera=aravis, light='backend = "manual"')
        rig = make_rig(f"rig://{path}", controller_retries=0)
        rig.open()
        try:
            yield rig.camera
        finally:
            assert not rig.close()

    def test_the_ranges_are_the_cameras_own(self, camera: Camera) -> None:
        # the fake's gain is the integer GainRaw 0..10 (no unit the driver could convert); exposure 10 us..10 s
        geometry = camera.geometry
        assert (geometry.gain_unit, geometry.gain_range) == ("raw", (0.0, 10.0))
        assert geometry.exposure_range_us == (10, 10_000_000)
        assert camera.settings.gain == 0.0
