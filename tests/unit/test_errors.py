"""Every exception class of ours sits under the one root, and the tree keeps the shapes callers rely on."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from schemas.errors import DecodeError
from voicenote.errors import DependencyUnavailable, InvalidInput, JobStoreError, ResultCacheError, VoicenoteError

PACKAGES = ("schemas", "voicenote", "producer_api", "stream_workers", "ops")


def _our_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, prefix=package + ".")]
        for name in names:
            module = importlib.import_module(name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == name:
                    found.append(obj)
    return found


def test_every_exception_class_of_ours_is_a_voicenote_error() -> None:
    classes = _our_exception_classes()
    # The walk must see the classes the issue named, or it proves nothing.
    names = {c.__qualname__ for c in classes}
    assert {"EngineError", "UnsupportedFormat", "UnknownVoiceName", "ResultCacheError", "DecodeError", "ApiError"} <= names
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, VoicenoteError))
    assert outside == []


def test_the_root_is_one_class_whichever_module_it_is_imported_from() -> None:
    import schemas.errors

    assert schemas.errors.VoicenoteError is VoicenoteError
    assert schemas.errors.DependencyUnavailable is DependencyUnavailable
    assert issubclass(DecodeError, VoicenoteError)


def test_input_errors_stay_value_errors_for_validators() -> None:
    from voicenote.audio import UnsupportedFormat
    from voicenote.voices import UnknownVoiceName

    for cls in (UnsupportedFormat, UnknownVoiceName):
        assert issubclass(cls, InvalidInput) and issubclass(cls, ValueError)


@pytest.mark.parametrize("cls", [JobStoreError, ResultCacheError])
def test_redis_failures_name_their_dependency_but_are_distinct(cls: type[JobStoreError] | type[ResultCacheError]) -> None:
    err = cls("down")
    assert err.dependency == "redis" and str(err) == "down"
    assert not issubclass(ResultCacheError, JobStoreError) and not issubclass(JobStoreError, ResultCacheError)
