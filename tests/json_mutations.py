"""Paths into a JSON value and replacing the value at one, for fuzz tests of JSON readers."""
from __future__ import annotations

import json


def walk(obj, path=(), list_items: int | None = None):
    """Every path into ``obj`` (the root first); ``list_items`` bounds how many items of a list."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, path + (k,), list_items)
    elif isinstance(obj, list):
        for i, v in enumerate(obj if list_items is None else obj[:list_items]):
            yield from walk(v, path + (i,), list_items)


def put(obj, path, value):
    """A copy of ``obj`` with ``value`` at ``path``."""
    if not path:
        return value
    obj = json.loads(json.dumps(obj))
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj
