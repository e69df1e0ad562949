"""``cairn run``: run a command, or an MLflow Project's entry point, inside a new run."""
