"""Plain-PyTorch autolog, by responsibility (``cairn.pytorch.autolog()`` is its entry point).

- :mod:`.integration`: :class:`~.integration.PyTorchIntegration`, the object that owns the state, and
  :func:`~.integration.active`, the one accessor of the registered instance;
- :mod:`.hooks`: what is patched in torch (closures over the integration);
- :mod:`.session`: one run's training: step counting, queued metrics;
- :mod:`.losses`: the ``backward()`` scalars between two optimizer steps;
- :mod:`.loaders`: DataLoader epochs, batches and positions;
- :mod:`.discovery`: the model, example, optimizers, schedulers and scaler a loop trains;
- :mod:`.params`: optimizer params, lr keys, the model summary, the gradient norm;
- :mod:`.checkpoints`: when to checkpoint and what goes in; :mod:`.resume`: restoring one;
- :mod:`.model_logging`: the final model; :mod:`.worker`: the background thread;
- :mod:`.lightning_handoff`: enabling the Lightning integration, standing down inside its fits;
- :mod:`.config`: the options and failure reporting.

Dependencies point one way (``integration`` at the top, ``config`` at the bottom); no module reaches
another's private names. Importing this package imports nothing (its modules import torch).
"""
