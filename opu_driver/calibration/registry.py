"""The registry of calibration routines: each routine module registers how ``calibrate`` runs it from a plan.

A routine registers itself with :func:`register_routine`, next to its function: its result class (whose
``routine`` is the name it runs and is stored under), its place in the order, how it runs from a
:class:`~opu_driver.calibration.plan.CalibrationPlan`, which earlier results it uses and which routines make its
result stale. :mod:`~opu_driver.calibration.run` only reads this table, so adding a routine is one new module of
this package (every module is imported when the registry is first read) and its registration.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from .result import CalibrationResult

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["Routine", "RunFromPlan", "register_routine", "routines", "routine_names", "get_routine"]

RunFromPlan = Callable[[Any, "CalibrationPlan", Mapping[str, Any], bool], CalibrationResult]
"""How a routine runs in ``calibrate``: ``run(opu, plan, earlier, progress)``, ``earlier`` holding this run's
results so far by routine name (the ones named in ``needs`` when they ran)."""


@dataclass(frozen=True)
class Routine:
    """One registered calibration routine.

    Attributes:
        name: the routine's name on the command line and in a record (its result class's ``routine``).
        position: its place in the order of ``opu calibrate all`` (smaller first; gaps leave room).
        run: how it runs from a plan (:data:`RunFromPlan`).
        result: the class of its result.
        needs: earlier routines whose results of the same run it uses when present (a resumed run rebuilds them
            from the record with their result class's ``from_record``).
        stale_after: routines whose new result makes a stored result of this one stale (it is dropped).
        needs_reference: its result is tied to the linear-mode reference in use, so run alone it needs the
            stored reference of the plan's sizes (measured first when the record has none).
        sets_camera: it leaves the camera at new settings, which the record's settings then follow.
    """

    name: str
    position: int
    run: RunFromPlan
    result: type[CalibrationResult]
    needs: tuple[str, ...] = ()
    stale_after: tuple[str, ...] = ()
    needs_reference: bool = False
    sets_camera: bool = False


_REGISTRY: dict[str, Routine] = {}
_loaded = False


def register_routine(
    result: type[CalibrationResult],
    *,
    position: int,
    needs: tuple[type[CalibrationResult], ...] = (),
    stale_after: tuple[type[CalibrationResult], ...] = (),
    needs_reference: bool = False,
    sets_camera: bool = False,
) -> Callable[[RunFromPlan], RunFromPlan]:
    """Decorator: register the decorated ``run(opu, plan, earlier, progress)`` as the routine of ``result``.

    Other routines are named by their result classes. The checks between routines (unique names and places,
    ``needs`` and ``stale_after`` naming earlier routines) run when the registry is first read.
    """

    def register(run: RunFromPlan) -> RunFromPlan:
        name = result.routine
        if not name:
            raise TypeError(f"{result.__name__} has no routine name (set its ClassVar routine)")
        known = _REGISTRY.get(name)
        if known is not None and (known.run.__module__, known.run.__qualname__) != (run.__module__, run.__qualname__):
            raise ValueError(f"routine {name!r} is registered twice ({known.run.__module__} and {run.__module__})")
        _REGISTRY[name] = Routine(
            name,
            int(position),
            run,
            result,
            tuple(r.routine for r in needs),
            tuple(r.routine for r in stale_after),
            bool(needs_reference),
            bool(sets_camera),
        )
        return run

    return register


def _load() -> None:
    """Import every module of the calibration package once, so every routine has registered itself."""
    global _loaded
    if _loaded:
        return
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")
    _check(sorted(_REGISTRY.values(), key=lambda r: r.position))
    _loaded = True


def _check(ordered: list[Routine]) -> None:
    positions = [r.position for r in ordered]
    if len(set(positions)) != len(positions):
        raise ValueError(f"two routines share a position: {[(r.name, r.position) for r in ordered]}")
    for index, entry in enumerate(ordered):
        before = {r.name for r in ordered[:index]}
        for name in entry.needs + entry.stale_after:
            if name not in before:
                raise ValueError(f"routine {entry.name!r} refers to {name!r}, which is not an earlier routine")
        for name in entry.needs:
            if not hasattr(_REGISTRY[name].result, "from_record"):
                raise ValueError(
                    f"routine {entry.name!r} needs {name!r}, whose result has no from_record (a "
                    "resumed run could not hand it over)"
                )


def routines() -> tuple[Routine, ...]:
    """Every registered routine, in the order ``opu calibrate all`` runs them."""
    _load()
    return tuple(sorted(_REGISTRY.values(), key=lambda r: r.position))


def routine_names() -> tuple[str, ...]:
    """The names of :func:`routines`, in order."""
    return tuple(r.name for r in routines())


def get_routine(name: str) -> Routine:
    """The routine registered under ``name``.

    Raises:
        InvalidInputError: no routine has that name.
    """
    _load()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown routine {name!r}; choose from {routine_names()} or 'all'") from None
