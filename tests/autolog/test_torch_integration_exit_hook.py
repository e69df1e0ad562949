"""Plain-PyTorch autolog with an injected client: its exit hook (ending its run at exit) goes with disable."""

from __future__ import annotations

import cairn
from cairn import background


def _integration_hooks() -> list[object]:
    from cairn.autolog.torch.integration import PyTorchIntegration

    return [hook for hook in background._exit_hooks if isinstance(getattr(hook, "__self__", None), PyTorchIntegration)]


def test_disable_removes_the_exit_hook_of_an_integration_with_a_client() -> None:
    cairn.pytorch.autolog(client=cairn.Client(), log_models=False)
    try:
        assert len(_integration_hooks()) == 1  # ends its run at exit
    finally:
        cairn.pytorch.autolog(disable=True)
    assert _integration_hooks() == []  # not kept referenced (with its client) after disable
