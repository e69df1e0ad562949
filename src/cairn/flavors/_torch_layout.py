"""The PyTorch flavor's directory layout: the MLmodel flavor name, file names and architecture kinds."""

from __future__ import annotations

FLAVOR_NAME = "pytorch"
LOADER_MODULE = "cairn.flavors.pytorch"
DATA_DIR = "data"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "weights.json"
PROGRAM_FILE = "model.pt2"
SKELETON_FILE = "skeleton.pkl"
EXTRA_STATE_NAME = "extra_state"
MLFLOW_PICKLE_FILE = "model.pth"
#: File stem of a state dict logged by :func:`cairn.flavors.pytorch.log_state_dict`.
STATE_DICT_NAME = "state_dict"
MLFLOW_STATE_DICT_FILE = "state_dict.pth"
ARCHITECTURES = ("class", "factory", "export", "skeleton")
DEVICE_PARAM = "device"
