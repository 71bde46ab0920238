"""Name -> factory registries that refuse duplicates and suggest close matches for unknown names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fewlabels.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to factories (classes or functions), in the style of timm's `register_model`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers `obj` under `name`; a second registration of the same name raises."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        """Return the factory registered as `name`, or raise a ConfigError listing close matches."""
        key = name.strip().lower().replace("-", "_")
        for candidate in (name, key, key.replace("_", "-")):
            if candidate in self._items:
                return self._items[candidate]
        hint = did_you_mean(key, self._items)
        raise ConfigError(f"unknown {self.kind} {name!r}: {hint}choose one of {', '.join(sorted(self._items))}")

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as `name` with `kwargs`."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
