"""Shared test helpers: paths, the CRD's schema, its JSON-Schema form and its defaulting."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "qfleet.io_quantizedmodels.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID_MODELS = REPO / "tests" / "data" / "invalid_models.yaml"
HF_CONFIGS = REPO / "tests" / "data" / "hf-configs"

Schema = dict[str, Any]


@cache
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_version() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version


def openapi_schema() -> Schema:
    return copy.deepcopy(crd_version()["schema"]["openAPIV3Schema"])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def invalid_cases() -> list[dict[str, Any]]:
    return load_yaml(INVALID_MODELS)


def to_json_schema(schema: Schema) -> Schema:
    """The structural schema as JSON Schema: objects closed, sets unique, x-kubernetes-* dropped.

    Closing objects makes a typo in an example fail here the way strict field validation fails
    it in the apiserver; CEL rules and list-map keys are not expressible and stay unchecked.
    """
    result: Schema = {}
    for key, value in schema.items():
        if key == "x-kubernetes-list-type" and value == "set":
            result["uniqueItems"] = True
        elif key.startswith("x-kubernetes-"):
            continue
        elif key == "properties":
            result[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            result[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            result[key] = [to_json_schema(sub) for sub in value]
        else:
            result[key] = value
    if result.get("type") == "object" and "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Structural defaulting as the apiserver does it: absent fields get `default`, recursively."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, item in value.items():
            if name in schema.get("properties", {}):
                apply_defaults(item, schema["properties"][name])
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(item, schema["items"])
    return value


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every sub-schema with its path (`spec.rollout.steps[].weight`)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}[*]")


def run_worker_until(controller: Any, key: Any, finished: Any, timeout: float = 5.0) -> None:
    """Wakes `key` and runs one worker of `controller` until a visit ends with `finished()` true (or `timeout`): the
    worker runs on to its next wait for the queue first, so any retry it schedules is in the queue by then."""
    import asyncio

    async def run() -> None:
        ended = asyncio.Event()
        done = controller.queue.done

        def done_and_tell(done_key: Any) -> None:
            done(done_key)
            if finished():
                ended.set()

        controller.queue.done = done_and_tell
        controller.wake(key)
        worker = asyncio.create_task(controller._worker())
        try:
            await asyncio.wait_for(ended.wait(), timeout=timeout)
        except TimeoutError:
            pass  # the caller asserts what it expected
        finally:
            worker.cancel()

    asyncio.run(run())
