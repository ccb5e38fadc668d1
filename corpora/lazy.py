"""Lazy public names of a package (PEP 562): ``from corpora import ingest`` imports
:mod:`corpora.ingest` when the name is first used, not when the package is, so that a command
that needs none of them (``trawl --help``) starts without pyarrow or NumPy.

A leaf module (standard library only). :func:`install` gives the package a ``__getattr__`` that
imports the module defining a name on first use and keeps the value; a name that is also a
submodule's (``corpora.ingest`` the module, ``corpora.ingest`` the function) stays the exported
value when the import system binds the submodule on the package.
"""
from __future__ import annotations

import importlib
import sys
import types


def install(package: str, exports: dict[str, str]) -> None:
    """Make ``exports`` (public name -> defining module) lazy attributes of ``package``."""
    mod = sys.modules[package]

    def __getattr__(name: str):
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where), name)
        setattr(mod, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(mod.__dict__) | set(exports))

    class _Package(types.ModuleType):
        def __setattr__(self, name, value):
            # importing submodule package.name binds it on the package; when the package exports
            # a value of that name (defined in that submodule), the name keeps meaning the value
            if (name in exports and isinstance(value, types.ModuleType)
                    and value.__name__ == f"{package}.{name}" and exports[name] == value.__name__):
                value = getattr(value, name)
            super().__setattr__(name, value)

    mod.__getattr__ = __getattr__
    mod.__dir__ = __dir__
    mod.__class__ = _Package
