"""The ``opu`` command: list devices, show info, run the emulator, the demo and the benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opu_driver.errors import OpuError

__all__ = ["main"]

_log = logging.getLogger(__name__)


def _cmd_list(args: argparse.Namespace) -> int:
    from opu_driver.devices.v1.discovery import describe_devices

    text = describe_devices()
    print(text)
    return 1 if text.startswith("cannot scan USB") else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from opu_driver import open as open_opu

    with open_opu(args.url, laser_on=False) as opu:
        info = opu.info.as_dict()
        status = opu.status()
        info["laser_power_mw"] = status.laser_power_mw
        info["temperature_c"] = status.temperature_c
        info["interlock_ok"] = status.interlock_ok
        info["trigger_mode"] = status.trigger_mode.value
        info["exposure_us"] = status.camera.exposure_us
        info["frame_time_us"] = status.camera.frame_time_us
        info["pixel_format"] = status.camera.pixel_format.name if status.camera.pixel_format else None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        args.url,
        n_features=args.features,
        n_components=args.components,
        batch=args.batch,
        macro_px=args.macro_px,
        dfa_epochs=args.dfa_epochs,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmarks

    return run_benchmarks(quick=args.quick, repeats=args.repeats, only=args.only, json_path=args.json)


def _parse_bind(text: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port)."""
    from opu_driver.errors import ConfigurationError

    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--bind {text!r}: use HOST:PORT, e.g. 127.0.0.1:5000")
    return host, int(port)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from opu_driver.errors import ConfigurationError
    from opu_driver.service import OpuService

    if sum((args.token is not None, args.token_file is not None, args.no_token)) > 1:
        raise ConfigurationError("give at most one of --token, --token-file and --no-token")
    token: str | None = args.token
    if args.no_token:
        token = ""
    elif token is None and args.token_file is None:
        token = os.environ.get("OPU_SERVICE_TOKEN") or None  # else the default token file
    limits = _service_limits(args)
    service = OpuService(
        args.url,
        bind=_parse_bind(args.bind),
        token=token,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        allow_cleartext=args.allow_cleartext,
        opu_settings=_serve_opu_settings(args),
        **limits,
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            service.start()
        except OSError as exc:
            print(f"opu serve: cannot listen on {args.bind}: {exc}", file=sys.stderr)
            return 2
        host, port = service.address
        if service.token_file is not None:
            access = f"token in {service.token_file}"
        else:
            access = "token required" if token else "no token"
        print(
            f"opu serve: serving {args.url} on {host}:{port}; {'tcps (TLS)' if service.tls else 'tcp'}, {access}; "
            "stop with Ctrl-C or SIGTERM",
            flush=True,
        )
        while not stop_requested.wait(0.5):
            pass
        clean = service.stop(timeout_s=args.shutdown_timeout_s)
        stats = service.stats()
        print(
            f"opu serve: stopped{'' if clean else ' (some connections did not end in time)'}; "
            f"{stats.requests} requests, {stats.vectors} vectors, {stats.device_calls} device calls; "
            "device closed",
            flush=True,
        )
        return 0
    finally:
        if not stop_requested.is_set() and service.running:
            service.stop(timeout_s=args.shutdown_timeout_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_opu_settings(args: argparse.Namespace) -> dict[str, object]:
    """The device settings given to ``opu serve`` (the others keep OpuSettings' defaults)."""
    names = ("retries", "timeout_s", "reconnect_timeout_s", "pixel_format")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _service_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The ServiceLimits fields given on the command line (the others keep their defaults)."""
    from opu_driver.service import ServiceLimits

    names = (f.name for f in dataclasses.fields(ServiceLimits))
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _add_service_limit_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`ServiceLimits` field (``--max-device-bytes`` ...), so the CLI cannot fall behind."""
    from opu_driver.service import ServiceLimits

    defaults = ServiceLimits()
    for f in dataclasses.fields(ServiceLimits):
        default = getattr(defaults, f.name)
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=type(default),
            default=None,
            metavar="R" if f.name.endswith("_per_s") else "S" if f.name.endswith("_s") else "N",
            help=f"ServiceLimits.{f.name} (default: {default}; see docs/service.md)",
        )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """``opu calibrate``: a path that turns bad during the run (a disk that fills, a folder removed) ends it with
    one line and status 2, like the paths refused before it starts, not with a traceback."""
    from opu_driver.calibration import CalibrationError

    try:
        return _run_calibration(args)
    except OpuError:
        raise
    except OSError as exc:  # OpuErrors that are OSErrors too (timeouts, a lost connection) went above
        where = f"{exc.filename}: " if exc.filename else ""
        raise CalibrationError(f"cannot write {where}{exc.strerror or exc}") from exc


def _checked_calibration_paths(args: argparse.Namespace) -> Path:
    """The store directory of ``opu calibrate``, once it and the report path are known to be writable: refused
    here (CalibrationError, InvalidInputError: status 2, one line), before the device is opened, not after the run."""
    from opu_driver.calibration import CalibrationError, CalibrationStore, default_store_dir

    store_dir = Path(args.out) if args.out else default_store_dir()
    if not args.no_save:
        if store_dir.exists() and not store_dir.is_dir():
            raise CalibrationError(f"--out {store_dir}: not a directory (a calibration store is a directory)")
        CalibrationStore(store_dir).check_writable()
    if args.report:
        from opu_driver.calibration.report import check_report_path

        # A bad path or a missing matplotlib fails now, not after the run. The report's folder must exist, unless
        # it is the store directory this run creates (--out calib/ --report calib/report.png).
        in_store = not args.no_save and Path(args.report).parent.absolute() == store_dir.absolute()
        check_report_path(args.report, create_folder=in_store)
    return store_dir


def _run_calibration(args: argparse.Namespace) -> int:
    from opu_driver import open as open_opu
    from opu_driver.calibration import CalibrationPlan, CalibrationStore, calibrate, summary_table
    from opu_driver.errors import InvalidInputError

    if args.resume and args.routine != "all":
        raise InvalidInputError("--resume continues an interrupted 'opu calibrate all'; single routines run afresh")
    store_dir = _checked_calibration_paths(args)
    store = None if args.no_save else CalibrationStore(store_dir)
    apply_from = str(store_dir) if store is not None and store_dir.is_dir() else None
    progress = not args.no_progress and sys.stderr.isatty()
    # The plan is checked before the device is opened; the default output count needs the camera's size.
    plan = CalibrationPlan(
        n_features=1000 if args.n_features is None else args.n_features,
        n_components=4096 if args.n_components is None else args.n_components,
        dark_frames=args.frames,
        dark_method=args.method,
    )
    settings = {"pixel_format": args.pixel_format} if args.pixel_format else {}
    # The stored calibration of this device is applied first (settings, lag, references) so a single routine
    # extends it; its drift check is skipped: a calibration run is about to measure afresh.
    with open_opu(args.url, calibration=apply_from, drift_check=False, **settings) as opu:
        info = opu.info
        if args.n_components is None:
            plan = dataclasses.replace(plan, n_components=min(4096, info.camera_width * info.camera_height))
        if not args.json:
            print(
                f"calibrating {info.model} {info.serial_number} (firmware {info.firmware_version}): "
                f"{plan.n_features} features -> {plan.n_components} outputs",
                flush=True,
            )

        def report_progress(name: str, result) -> None:
            if not args.json:
                print(f"  {name:<10} done", flush=True)

        record = calibrate(
            opu, [args.routine], store, plan, resume=args.resume, progress=progress, on_result=report_progress
        )
    report = None
    if args.report:
        from opu_driver.calibration.report import render_report

        report = str(render_report(record, args.report))
    saved = str(record.path) if record.path else None
    if args.json:
        print(
            json.dumps(
                {
                    "routine": args.routine,
                    "device": info.serial_number,
                    "settings": record.settings,
                    "results": record.results,
                    "saved": saved,
                    "report": report,
                },
                indent=2,
            )
        )
    else:
        print(summary_table(record))
        if saved:
            print(f"saved to {saved}")
        if report:
            print(f"report written to {report}")
    return 0


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from .fuzz import PARSERS, format_report, run_fuzz

    parsers = PARSERS if args.parser == "all" else (args.parser,)
    reports = run_fuzz(parsers, cases=args.cases, seed=args.seed, progress=not args.no_progress)
    print(format_report(reports))
    return 0 if all(r.ok for r in reports) else 1


@contextlib.contextmanager
def _quiet_fault_logs(verbose: int) -> Iterator[None]:
    """Raise the driver's and the emulator's loggers to ERROR for a run under faults, unless ``-v`` was given:
    every retry and saturated frame is logged at WARNING, thousands of lines, and the command's table counts them.
    """
    quiet = [] if verbose else [logging.getLogger(name) for name in ("opu_driver", "firmware_sim")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _cmd_soak(args: argparse.Namespace) -> int:
    from .soak import SoakConfig, format_report, run_soak

    config = SoakConfig(
        frames=args.frames, faults=args.faults, url_query=args.url_query, seed=args.seed, retries=args.retries
    )
    with _quiet_fault_logs(args.verbose):
        report = run_soak(config, progress=not args.no_progress and not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def _split(text: str) -> list[str]:
    """A comma-separated option's items, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_batches(text: str) -> tuple[int, ...]:
    from opu_driver.errors import ConfigurationError

    try:
        return tuple(int(item.replace("_", "")) for item in _split(text))
    except ValueError:
        raise ConfigurationError(f"--batches {text!r}: give sizes separated by commas, e.g. 64,300") from None


def _cmd_faults(args: argparse.Namespace) -> int:
    from .faults import SweepConfig, format_summary, format_table, parse_rate, run_sweep

    settings = {
        name: getattr(args, name)
        for name in ("retries", "timeout_s", "chunk_frames")
        if getattr(args, name) is not None
    }
    config = SweepConfig(
        kinds=tuple(_split(args.kinds)),
        rates=tuple(parse_rate(item) for item in _split(args.rates)),
        batches=_parse_batches(args.batches),
        seeds=args.seeds,
        operations=tuple(_split(args.operations)),
        n_features=args.n_features,
        n_components=args.n_components,
        url_query=args.url_query,
        first_seed=args.first_seed,
        clean_repeats=args.clean_repeats,
        settings=settings,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # a bad path fails now, not after the sweep
    with _quiet_fault_logs(args.verbose):
        report = run_sweep(config, progress=not args.no_progress and sys.stderr.isatty())
    print(format_table(report))
    print(format_summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from .bench import BENCHMARKS  # the registry only: each benchmark's module is imported when it runs

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
        "sim",
        help="run the emulator as its own process, its controller line on a pseudo-terminal (options: opu sim --help)",
        add_help=False,
    )

    p = sub.add_parser("demo", help="project random data on the emulator and compare with theory")
    p.add_argument("url", nargs="?", default="sim://?seed=0", help="device URL (default: sim://?seed=0)")
    p.add_argument("--features", type=int, default=1000)
    p.add_argument("--components", type=int, default=1024)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument(
        "--macro-px",
        type=int,
        default=24,
        help="macro-pixel side in mirrors (24: whole input modes of the default emulator)",
    )
    p.add_argument("--dfa-epochs", type=int, default=3, help="epochs of the DFA training demo (0 skips it)")
    p.set_defaults(func=_cmd_demo)

    from opu_driver.calibration.run import ROUTINES

    p = sub.add_parser("calibrate", help="calibration routines; results saved to a calibration store that open applies")
    p.add_argument(
        "routine",
        choices=[*ROUTINES, "all"],
        help="one routine, or all of them in order (exposure first, drift baseline last)",
    )
    p.add_argument("--url", default="sim://", help="device URL (default: sim://)")
    p.add_argument(
        "--out",
        help="calibration store directory (default: $OPU_CALIBRATION_DIR or "
        "~/.local/share/opu-driver/calibrations, where opu_driver.open looks)",
    )
    p.add_argument("--no-save", action="store_true", help="measure only; neither read nor write a store")
    p.add_argument("--resume", action="store_true", help="with 'all': continue the last unfinished run")
    p.add_argument("--n-features", type=int, default=None, help="features of the projection (default: 1000)")
    p.add_argument(
        "--n-components",
        type=int,
        default=None,
        help="outputs of the projection (default: 4096, or all pixels of a smaller camera)",
    )
    p.add_argument("--frames", type=int, default=64, help="dark frames to average")
    p.add_argument("--method", choices=["shutter", "laser_off"], default="shutter", help="how the dark is made")
    p.add_argument("--pixel-format", default=None, help="e.g. MONO12 (default: the device's)")
    p.add_argument("--report", metavar="PNG", help="also draw the record's plots to this PNG (needs the plot extra)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("bench", help="benchmarks: emulator frame rate, transform vs a dense complex product")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    p.add_argument("--only", choices=list(BENCHMARKS), help="run one benchmark only")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "serve",
        help="serve one device's linear projections to DFA clients over TCP "
        "(tcp://HOST:PORT; protocol in docs/service.md)",
    )
    p.add_argument("--url", default="sim://", help="device URL (default: sim://)")
    p.add_argument(
        "--bind",
        default="127.0.0.1:5000",
        help="HOST:PORT to listen on (default: 127.0.0.1:5000; "
        "port 0 picks a free one; a non-loopback host needs --tls-cert or --allow-cleartext)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="shared secret clients must present (visible in the process "
        "list: prefer --token-file or $OPU_SERVICE_TOKEN)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="the token file, made with a fresh token (mode 0600) when absent (default: $OPU_SERVICE_TOKEN_FILE, "
        "else $XDG_RUNTIME_DIR/opu-driver/service-token, else ~/.local/share/opu-driver/service-token, where "
        "local clients find it)",
    )
    p.add_argument(
        "--no-token", action="store_true", help="no token at all (a loopback --bind only: tests and local use)"
    )
    p.add_argument("--tls-cert", default=None, help="PEM certificate (chain): serve over TLS, clients use tcps://")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert (if not in the same file)")
    p.add_argument(
        "--allow-cleartext",
        action="store_true",
        help="allow a non-loopback --bind without TLS: the token and the data cross the network in clear",
    )
    _add_service_limit_flags(p)
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        help="device retries after a fault (OpuSettings.retries, "
        "default 2; 0 makes the first fault the request's error)",
    )
    p.add_argument("--timeout-s", type=float, default=None, help="device timeout (OpuSettings.timeout_s, default 5)")
    p.add_argument(
        "--reconnect-timeout-s",
        type=float,
        default=None,
        help="how long a request waits for an "
        "unplugged device to come back (OpuSettings.reconnect_timeout_s, default 5; 0 disables)",
    )
    p.add_argument("--pixel-format", default=None, help="e.g. MONO12 (default: the device's or its calibration's)")
    p.add_argument("--shutdown-timeout-s", type=float, default=10.0, help="how long a stop waits for requests")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "fuzz",
        help="fuzz the packet parsers (driver, firmware) and the service's message parser; "
        "exit 1 on any undocumented exception",
    )
    p.add_argument("--cases", type=int, default=100_000, help="cases per parser (default: 100000)")
    p.add_argument(
        "--parser", choices=["driver", "firmware", "service", "all"], default="all", help="which parser (default: all)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the cases (case i of a seed is always the same)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fuzz)

    from .soak import DEFAULT_FAULTS, DEFAULT_URL_QUERY

    p = sub.add_parser(
        "soak",
        help="push many frames through a faulty emulator and check every result row bit "
        "for bit against its own request's; exit 1 on any wrong, lost or duplicated row",
    )
    p.add_argument("--frames", type=int, default=1_000_000, help="DMD frames to send (default: 1000000)")
    p.add_argument(
        "--faults", default=DEFAULT_FAULTS, help=f"emulator fault plan (default: {DEFAULT_FAULTS}; '' for none)"
    )
    p.add_argument(
        "--url-query",
        default=DEFAULT_URL_QUERY,
        help=f"emulator options without seed, noise and faults (default: {DEFAULT_URL_QUERY})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the emulator, its faults and the batches")
    p.add_argument("--retries", type=int, default=2, help="the driver's retries per sequence (default: 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_soak)

    _add_faults_parser(sub)

    p = sub.add_parser("rig", help="lab-built OPUs: check a rig file's parts together")
    rig_sub = p.add_subparsers(dest="rig_command", required=True)
    p = rig_sub.add_parser(
        "check",
        help="show random patterns on a rig and report frames matched and lost, frame rate, lag, dark level and "
        "saturation; exit 1 on any loss the frame matching cannot explain",
    )
    p.add_argument("rig_file", help="the rig file (TOML; see docs/rig.md)")
    p.add_argument("--patterns", type=int, default=2000, help="random patterns to show (default: 2000)")
    p.add_argument("--components", type=int, default=256, help="outputs per pattern (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random patterns")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_rig_check)
    return parser


def _cmd_rig_check(args: argparse.Namespace) -> int:
    from .rigcheck import format_rig_check, run_rig_check

    report = run_rig_check(
        args.rig_file,
        patterns=args.patterns,
        n_components=args.components,
        seed=args.seed,
        progress=not args.no_progress and not args.json and sys.stderr.isatty(),
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_rig_check(report))
    return 0 if report.ok else 1


def _add_faults_parser(sub: Any) -> None:
    """``opu faults``: its options, defaults from opu_tools.faults."""
    from .faults import DEFAULT_BATCHES, DEFAULT_KINDS, DEFAULT_RATES, OPERATIONS, format_rate
    from .soak import DEFAULT_URL_QUERY

    kinds = ",".join(DEFAULT_KINDS)
    rates = ",".join(format_rate(rate) for rate in DEFAULT_RATES)
    batches = ",".join(str(batch) for batch in DEFAULT_BATCHES)
    p = sub.add_parser(
        "faults",
        help="fault sweep: failed calls, wrong rows, frames and time relative to a fault-free run, per fault kind, "
        "rate and batch size (table in docs/reliability.md); exit 1 on any wrong, lost or extra row",
    )
    p.add_argument("--kinds", default=kinds, help=f"fault kinds, comma-separated; '+' mixes kinds (default: {kinds})")
    escaped = rates.replace("%", "%%")  # argparse formats help texts with %
    p.add_argument("--rates", default=rates, help=f"fault rates, as 0.005 or 0.5%% (default: {escaped})")
    p.add_argument("--batches", default=batches, help=f"batch sizes (default: {batches})")
    p.add_argument("--seeds", type=int, default=2, help="seeds (runs) per cell (default: 2)")
    p.add_argument("--operations", default=",".join(OPERATIONS), help=f"operations (default: {','.join(OPERATIONS)})")
    p.add_argument("--n-features", type=int, default=500, help="features per vector (default: 500)")
    p.add_argument("--n-components", type=int, default=64, help="outputs per vector (default: 64)")
    p.add_argument(
        "--url-query",
        default=DEFAULT_URL_QUERY,
        help=f"emulator options without seed, noise and faults (default: {DEFAULT_URL_QUERY})",
    )
    p.add_argument("--first-seed", type=int, default=0, help="the first seed; cells use seeds first..first+seeds-1")
    p.add_argument(
        "--clean-repeats",
        type=int,
        default=3,
        help="fault-free calls per operation, batch and seed, at least (one is made before each kind's runs); "
        "the median of their times is the clean time (default: 3)",
    )
    p.add_argument("--retries", type=int, default=None, help="OpuSettings.retries (default: the driver's, 2)")
    p.add_argument("--timeout-s", type=float, default=None, help="OpuSettings.timeout_s (default: the driver's)")
    p.add_argument("--chunk-frames", type=int, default=None, help="OpuSettings.chunk_frames (default: the driver's)")
    p.add_argument("--json", metavar="PATH", help="also write the report to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_faults)


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
