"""The ``opu`` command: list devices, show info, run the emulator, the demo and the benchmarks."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from .errors import OpuError

__all__ = ["main"]

_log = logging.getLogger(__name__)


def _cmd_list(args: argparse.Namespace) -> int:
    from .discovery import describe_devices

    text = describe_devices()
    print(text)
    return 1 if text.startswith("cannot scan USB") else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import open as open_opu

    with open_opu(args.url, laser_on=False) as opu:
        info = opu.info.as_dict()
        info["laser_power_mw"] = opu.controller.laser_power_mw
        info["temperature_c"] = opu.controller.temperature_c
        info["interlock_ok"] = opu.controller.interlock_ok
        info["trigger_mode"] = opu.controller.trigger_mode.value
        settings = opu.camera.settings
        info["exposure_us"] = settings.exposure_us
        info["frame_time_us"] = settings.frame_time_us
        info["pixel_format"] = settings.pixel_format.name
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.url, n_features=args.features, n_components=args.components, batch=args.batch,
                    macro_px=args.macro_px)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmarks

    return run_benchmarks(quick=args.quick, repeats=args.repeats, only=args.only, json_path=args.json)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from . import open as open_opu
    from .calibration import CalibrationRecord, CalibrationStore, measure_dark, measure_latency

    with open_opu(args.url, pixel_format=args.pixel_format) as opu:
        n_components = args.n_components or opu.info.camera_width * opu.info.camera_height
        if args.routine == "dark":
            result = measure_dark(opu, n_components, n_frames=args.frames, method=args.method)
        else:
            n_components = min(n_components, 256)
            result = measure_latency(opu, n_frames=max(args.frames, 17), n_components=n_components)
        arrays = {f"{args.routine}/{name}": value for name, value in result.arrays().items()}
        info, camera = opu.info, opu.camera.settings
        settings = {"exposure_us": camera.exposure_us, "gain": camera.gain, "pixel_format": camera.pixel_format.name,
                    "n_components": n_components}
        summary = result.summary()
        path = None
        if args.out:
            record = CalibrationRecord(
                model=info.model, serial_number=info.serial_number, firmware_version=info.firmware_version,
                settings=settings, results={args.routine: summary}, arrays=arrays,
            )
            path = str(CalibrationStore(args.out).save(record))
    if args.json:
        print(json.dumps({"routine": args.routine, "device": info.serial_number, "settings": settings,
                          "result": summary, "saved": path}, indent=2))
    else:
        print(f"{args.routine} calibration of {info.model} {info.serial_number} ({settings['pixel_format']}, "
              f"{settings['exposure_us']} us, {n_components} outputs)")
        for key, value in summary.items():
            print(f"  {key:<18} {value}")
        if path:
            print(f"saved to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opu", description="Drive an optical processing unit (OPU) or its emulator.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="connected OPUs: USB ids matched with their controller serial ports")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="identity, geometry and state of a device")
    p.add_argument("url", nargs="?", default="sim://", help="device URL (default: sim://)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    sub.add_parser(
        "sim", help="run the emulator as its own process, its controller line on a pseudo-terminal "
        "(options: opu sim --help)", add_help=False,
    )

    p = sub.add_parser("demo", help="project random data on the emulator and compare with theory")
    p.add_argument("url", nargs="?", default="sim://?seed=0", help="device URL (default: sim://?seed=0)")
    p.add_argument("--features", type=int, default=1000)
    p.add_argument("--components", type=int, default=1024)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--macro-px", type=int, default=24,
                   help="macro-pixel side in mirrors (24: whole input modes of the default emulator)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("calibrate", help="calibration routines (dark, latency so far); results to a calibration store")
    p.add_argument("routine", choices=["dark", "latency"])
    p.add_argument("--url", default="sim://", help="device URL (default: sim://)")
    p.add_argument("--out", help="calibration store directory to save the result in")
    p.add_argument("--n-components", type=int, default=None, help="outputs whose pixels to measure (default: all)")
    p.add_argument("--frames", type=int, default=64, help="frames to average (dark) or patterns to show (latency)")
    p.add_argument("--method", choices=["shutter", "laser_off"], default="shutter")
    p.add_argument("--pixel-format", default=None, help="e.g. MONO12 (default: the device's)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("bench", help="benchmarks: emulator frame rate, transform vs a dense complex product")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    p.add_argument("--only", choices=["frames", "transform", "encoders", "linear"], help="run one benchmark only")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        # `opu sim` has its own options (firmware_sim.pty_server); hand them over untouched.
        from firmware_sim.pty_server import main as sim_main

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return sim_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except OpuError as exc:
        print(f"opu: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
