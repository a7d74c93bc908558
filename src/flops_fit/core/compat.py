"""The module paths of release 0.1.0, kept importable after the package moved into layers.

``import flops_fit`` installs one import hook: ``from flops_fit.planning import SweepPlanner`` (or
``flops_fit.tracking``, ``flops_fit.result``, ``python -m flops_fit.cli`` ...) still works and warns once
with a DeprecationWarning naming the new place. Names are looked up in the new modules when first used;
this module names them as strings only, so it depends on no layer above it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

#: Each old module path and the module(s) now holding its names (first match wins).
MOVED: dict[str, tuple[str, ...]] = {
    "flops_fit._io": ("flops_fit.core.io",),
    "flops_fit.ledger": ("flops_fit.core.ledger",),
    "flops_fit.runs": ("flops_fit.core.runs",),
    "flops_fit.analysis._validate": ("flops_fit.core.validate",),
    "flops_fit.training.config": ("flops_fit.core.train_config",),
    "flops_fit.training.outcome": ("flops_fit.core.outcome",),
    "flops_fit.training.schedule": ("flops_fit.core.schedule",),
    "flops_fit.flops": ("flops_fit.plan.flops",),
    "flops_fit.planning": (
        "flops_fit.plan.planner",
        "flops_fit.plan.sweep",
        "flops_fit.plan.spec",
        "flops_fit.plan.cost",
        "flops_fit.plan.search",
        "flops_fit.core.experiment",
        "flops_fit.core.sweepdir",
    ),
    "flops_fit.analysis.analyzer": ("flops_fit.report.analyzer", "flops_fit.report.laws"),
    # module paths of the original prototype (its test plan imports from them)
    "flops_fit.analyzer": ("flops_fit.report.analyzer", "flops_fit.report.laws"),
    "flops_fit.model": ("flops_fit.examples.gpt",),
    "flops_fit.result": ("flops_fit.report.result",),
    "flops_fit.plotting": ("flops_fit.report.plots",),
    "flops_fit.api": ("flops_fit.app.pipeline",),
    "flops_fit.cli": ("flops_fit.app.cli",),
    "flops_fit.stages": ("flops_fit.app.stages",),
    "flops_fit.tracking": ("flops_fit.app.tracking",),
}


class _Alias(types.ModuleType):
    """An old module path: its attributes are those of the new modules, looked up on first use."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved to {', '.join(targets)} (flops-fit 0.2 layers).")
        self.__targets = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"module {self.__name__!r} has no attribute {attr!r} (it moved to {self.__targets})"
        )


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        self.name, self.targets = name, targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if len(self.targets) == 1:
            module = importlib.import_module(self.targets[0])  # the very module: monkeypatching reaches it
            self._spec = (
                module.__spec__
            )  # the import system overwrites it with the old path's; restored below
            return module
        return _Alias(self.name, self.targets)

    def exec_module(self, module: types.ModuleType) -> None:
        if len(self.targets) == 1:
            module.__spec__ = self._spec
        warnings.warn(
            f"{self.name} moved to {' / '.join(self.targets)}; the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=3,
        )

    def get_code(self, fullname: str) -> Any:
        """The new module's code, so that ``python -m flops_fit.cli`` runs ``flops_fit.app.cli``."""
        spec = importlib.util.find_spec(self.targets[0])
        assert spec is not None and spec.loader is not None
        return spec.loader.get_code(self.targets[0])  # type: ignore[attr-defined]


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(fullname, targets))


def moved_attribute(package: str, name: str, target: str) -> Any:
    """``package.name`` of release 0.1.0, now ``target.name``: returned with a DeprecationWarning."""
    warnings.warn(
        f"{package}.{name} moved to {target}.{name} (also flops_fit.{name})", DeprecationWarning, stacklevel=3
    )
    return getattr(importlib.import_module(target), name)


def install() -> None:
    """Make the old module paths importable (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
