"""``cairn.autolog()``: every integration whose framework the script uses, enabled when it is imported.

Like ``mlflow.autolog()``, with one difference: nothing is imported here. An integration whose
framework is imported already is enabled at once; the others wait in an :class:`ImportWatcher` until the
script imports the framework (``torch``, ``transformers.trainer`` or ``transformers.integrations``,
``sklearn``; Lightning is covered by the PyTorch integration, which enables it when Lightning is
imported). Enabling waits until no import of a watched framework is half-way done, so cairn never reads
a partially initialised module. What each integration then does:

- PyTorch (``cairn.pytorch.autolog``): plain loops, and Lightning ``Trainer`` s;
- Transformers (``cairn.transformers.autolog``): a ``CairnCallback`` on every ``Trainer``, and
  ``report_to="cairn"`` accepted by ``TrainingArguments``/``Trainer``;
- scikit-learn (``cairn.sklearn.autolog``).

One integration drives a training loop: inside a Lightning fit or a Trainer the plain-loop hooks stand
down (see :data:`cairn.autolog.base.loops`).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cairn.autolog.base import ImportWatcher, imported
from cairn.autolog.config import report_failure

__all__ = ["autolog"]

# Packages whose imports in progress delay enabling (cairn must not import from a half-initialised one).
_FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "transformers", "sklearn")
_WATCHED = (
    "torch",
    "lightning",
    "pytorch_lightning",
    "sklearn",
    "transformers.trainer",
    "transformers.integrations.integration_utils",
)


@dataclass
class _Universal:
    """The options of one ``cairn.autolog()`` call and the integrations still waiting for their framework."""

    log_models: bool
    silent: bool
    extra_tags: dict[str, Any]
    pending: dict[str, tuple[str, Callable[[_Universal], None]]] = field(default_factory=dict)
    watcher: ImportWatcher | None = None

    def settle(self) -> None:
        """Enable every waiting integration whose framework is imported; stop watching when none waits."""
        progress = True
        while progress and self.pending:  # enabling one may import another's framework (sklearn imports torch)
            if _importing_a_framework():
                return  # the watched import that is under way calls back when it is done
            progress = False
            for name, (module, enable) in list(self.pending.items()):
                if name not in self.pending or not imported(module):
                    continue
                del self.pending[name]
                progress = True
                try:
                    enable(self)
                except Exception as exc:
                    report_failure(name, "enabling autolog", exc, silent=self.silent)
        if not self.pending and self.watcher is not None:
            self.watcher.uninstall()


def _importing_a_framework() -> bool:
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in _FRAMEWORKS and module is not None and not imported(name):
            return True
    return False


def _enabled_explicitly(module_name: str) -> bool:
    """Whether the integration was turned on by its own ``autolog()``, whose options then stay as given."""
    is_enabled = getattr(sys.modules.get(module_name), "is_enabled", None)
    return bool(is_enabled is not None and is_enabled())


def _enable_pytorch(options: _Universal) -> None:
    from cairn.autolog import pytorch

    if _enabled_explicitly(pytorch.__name__):
        return
    pytorch.autolog(log_models=options.log_models, silent=options.silent, extra_tags=options.extra_tags)


def _enable_transformers(options: _Universal) -> None:
    from cairn.autolog import transformers

    if _enabled_explicitly(transformers.__name__):
        return
    transformers.autolog(log_models="end" if options.log_models else False, silent=options.silent)


def _register_report_to(options: _Universal) -> None:
    from cairn.autolog import transformers

    transformers.register_report_to()


def _enable_sklearn(options: _Universal) -> None:
    from cairn.autolog import sklearn

    if _enabled_explicitly(sklearn.__name__):
        return
    sklearn.autolog(log_models=options.log_models, silent=options.silent, extra_tags=options.extra_tags)


_INTEGRATIONS: dict[str, tuple[str, Callable[[_Universal], None]]] = {
    "pytorch": ("torch", _enable_pytorch),
    "transformers": ("transformers.trainer", _enable_transformers),
    "report_to": ("transformers.integrations.integration_utils", _register_report_to),
    "sklearn": ("sklearn", _enable_sklearn),
}
_INSTALLED = {"pytorch": "torch", "transformers": "transformers", "report_to": "transformers", "sklearn": "sklearn"}

_active: _Universal | None = None


def autolog(
    *,
    log_models: bool = True,
    disable: bool = False,
    silent: bool = False,
    extra_tags: Mapping[str, Any] | None = None,
) -> None:
    """Enable autologging for every installed framework cairn integrates (PyTorch and Lightning,
    Transformers, scikit-learn), each when the script imports it; ``import`` order does not matter.

    Each integration runs with its own defaults plus these options; call its own ``autolog()`` (e.g.
    ``cairn.pytorch.autolog(checkpoint_every_n_steps=100)``) for the rest, before or after this call: an
    integration already enabled by its own ``autolog()`` keeps the options it was given. After this call,
    ``TrainingArguments(report_to="cairn")`` works too.

    Args:
        log_models: log trained models (Transformers: the final model, ``log_models="end"``).
        disable: stop waiting for imports and turn off every integration enabled so far.
        silent: report autolog failures on the ``cairn.autolog`` logger instead of as warnings.
        extra_tags: tags set on the runs the PyTorch and scikit-learn integrations log into.
    """
    global _active
    previous, _active = _active, None
    if previous is not None and previous.watcher is not None:
        previous.watcher.uninstall()
    if disable:
        _disable_all()
        return
    options = _Universal(log_models=log_models, silent=silent, extra_tags=dict(extra_tags or {}))
    for name, target in _INTEGRATIONS.items():
        if _installed(_INSTALLED[name]):
            options.pending[name] = target
    options.watcher = ImportWatcher(_WATCHED, options.settle)
    options.watcher.install()
    _active = options
    options.settle()


def _installed(top: str) -> bool:
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _disable_all() -> None:
    """``autolog(disable=True)`` of every integration module loaded (none is imported for this)."""
    for module_name in ("cairn.autolog.pytorch", "cairn.autolog.transformers", "cairn.autolog.sklearn"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "autolog"):
            module.autolog(disable=True)
