"""The error tree: one root, causes chained, everything pickles."""

import pickle

import pytest

from opu_driver import errors


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_derives_from_the_root_and_pickles_with_cause(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.OpuError)
    try:
        try:
            raise OSError(5, "input/output error")
        except OSError as cause:
            raise cls("something failed", 7) from cause
    except errors.OpuError as exc:
        clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is cls
    assert clone.message == "something failed" and clone.code == 7
    assert isinstance(clone.__cause__, OSError) and clone.__cause__.errno == 5
    assert "device code 7" in str(clone)


def test_dropped_frames_keeps_the_missing_count():
    clone = pickle.loads(pickle.dumps(errors.DroppedFramesError("lost", missing=3)))
    assert clone.missing == 3


def test_timeouts_are_also_builtin_timeouts_and_bad_input_is_a_value_error():
    assert issubclass(errors.CommunicationTimeoutError, TimeoutError)
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.ConnectionLostError, ConnectionError)
