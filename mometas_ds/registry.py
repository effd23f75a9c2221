"""Name -> class, for the objectives and the samplers: built-ins register on import, users with a decorator
in a module of theirs (``import_user_module``, for --user_modules)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Dict, Generic, Iterable, List, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of ``kind`` (a word for messages: "objective") that subclass ``base``, in registration order.

    With ``forbid_commas`` a name may not hold a comma (objective names are given comma-separated).
    """

    def __init__(self, kind: str, base: type, forbid_commas: bool = False):
        self.kind, self.base, self.forbid_commas = kind, base, forbid_commas
        self._classes: Dict[str, Type[T]] = {}

    def register(self, name: str, cls: Type[T] = None, *, overwrite: bool = False):
        """Register ``cls`` under ``name``; usable as a decorator when ``cls`` is left out."""

        def _register(registered):
            if not (isinstance(registered, type) and issubclass(registered, self.base)):
                raise TypeError(f"register_{self.kind}({name!r}): {registered!r} is not "
                                f"{'an' if self.base.__name__[0] in 'AEIOU' else 'a'} {self.base.__name__} subclass")
            if name in self._classes and self._classes[name] is not registered and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._classes[name].__name__})")
            registered.name = name
            self._classes[name] = registered
            return registered

        if not isinstance(name, str) or not name or (self.forbid_commas and "," in name):
            rule = "a non-empty string without commas" if self.forbid_commas else "a non-empty string"
            raise ValueError(f"{self.kind} name must be {rule}, got {name!r}")
        return _register if cls is None else _register(cls)

    def names(self) -> List[str]:
        return list(self._classes)

    def get(self, name: str) -> Type[T]:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]


def import_user_module(spec: str):
    """Import a ``.py`` file (by path) or a module (dotted name) once; its registrations take effect."""
    if spec.endswith(".py"):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {spec}")
        name = "mometas_user_" + os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(spec)


def import_user_modules(specs: Iterable[str], flag: str = "--user_modules") -> None:
    """Import each of ``specs`` (import_user_module); whatever a user's file raises becomes a ConfigError naming
    the flag and the module."""
    from mometas_ds.errors import ConfigError

    for spec in specs:
        try:
            import_user_module(spec)
        except Exception as exc:  # a user's file: report whatever it raised, naming it
            raise ConfigError(f"{flag}: could not import {spec}: {type(exc).__name__}: {exc}") from None
