"""``cairn models serve`` / ``cairn models predict``: MLflow's scoring protocol over a cairn model."""
