"""Name -> class, for the objectives and the samplers: built-ins register on import, users with a decorator."""
from __future__ import annotations

from typing import Dict, Generic, List, Type, TypeVar

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
