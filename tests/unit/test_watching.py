"""What Kopf does per watch event that qfleet turns off: the body copied to diff against, and each success's line."""
from __future__ import annotations

import logging

import kopf
import pytest

from qfleet import handlers, watching

BODY = kopf.Body({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "m-calibrate", "labels": {"a": "b"}},
                  "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}, "status": {"active": 1}})


def test_nothing_is_copied_or_stored_to_diff_against():
    storage = watching.NoDiffBase()
    assert storage.build(body=BODY) == {} and storage.fetch(body=BODY) is None
    patch = kopf.Patch()
    storage.store(body=BODY, patch=patch, essence=kopf.BodyEssence({"spec": {}}))
    assert not patch  # no annotation written on the object


def test_no_handler_of_qfleets_reads_a_diff_so_the_diff_base_is_never_needed():
    registry = kopf.get_default_registry()
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()


def test_every_indexer_and_event_watcher_is_named_for_the_quiet_filter():
    registry = kopf.get_default_registry()
    registered = {h.id for h in [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]}
    assert registered == set(handlers.WATCHERS)


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)


@pytest.mark.parametrize("message, kept", [
    ("Handler 'on_job' succeeded.", False),
    ("Indexer 'cache_jobs' succeeded.", False),
    ("Handler 'on_job' failed with an exception. Will ignore.", True),
    ("Handler 'someone_elses' succeeded.", True),
    ("Handler 'on_job' is invoked.", True),
])
def test_only_the_named_handlers_successes_are_dropped(message, kept):
    assert watching.QuietSuccesses(["on_job", "cache_jobs"]).filter(_record(message)) is kept


def test_installing_twice_leaves_one_filter_and_sets_the_storage():
    settings = kopf.OperatorSettings()
    watching.quiet(settings, ["on_job"])
    watching.quiet(settings, ["on_job"])
    assert isinstance(settings.persistence.diffbase_storage, watching.NoDiffBase)
    objects = logging.getLogger("kopf.objects")
    assert sum(isinstance(f, watching.QuietSuccesses) for f in objects.filters) == 1
