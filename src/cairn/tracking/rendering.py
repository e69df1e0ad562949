"""Turning Python objects (text, dicts, figures, images) into artifact bytes."""

from __future__ import annotations

import io
import json
from pathlib import PurePosixPath
from typing import Any

from cairn.errors import InvalidArgument


def dict_bytes(dictionary: Any, artifact_file: str) -> bytes:
    """JSON, or YAML when the file ends in .yaml/.yml."""
    suffix = PurePosixPath(artifact_file).suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_dump(dictionary, sort_keys=False, allow_unicode=True).encode()
        return json.dumps(dictionary, indent=2, ensure_ascii=False).encode()
    except (TypeError, ValueError, Exception) as exc:
        raise InvalidArgument(f"log_dict: cannot serialize to {artifact_file!r}: {exc}") from exc


def figure_bytes(figure: Any, artifact_file: str) -> bytes:
    """Render a matplotlib or plotly figure in the format the file extension names."""
    suffix = PurePosixPath(artifact_file).suffix.lower().lstrip(".")
    if not suffix:
        raise InvalidArgument(f"log_figure: {artifact_file!r} needs an extension such as .png, .svg or .html")
    module = type(figure).__module__
    if module.startswith("matplotlib"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, bbox_inches="tight")
        return buffer.getvalue()
    if module.startswith("plotly"):
        if suffix == "html":
            return str(figure.to_html(include_plotlyjs="cdn", full_html=True)).encode()
        if suffix == "json":
            return str(figure.to_json()).encode()
        try:
            return bytes(figure.to_image(format=suffix))
        except Exception as exc:
            raise InvalidArgument(
                f"log_figure: plotly needs the 'kaleido' package to write .{suffix}; use .html or .json, "
                f"or install kaleido ({exc})"
            ) from exc
    raise InvalidArgument(f"log_figure: expected a matplotlib or plotly figure, got {type(figure).__name__}")


def image_bytes(image: Any, artifact_file: str) -> bytes:
    """Encode a numpy array (HxW, HxWx1/3/4; uint8, or float in [0, 1]) or a PIL image."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise InvalidArgument(f"log_image: expected HxW, HxWx3 or HxWx4, got shape {array.shape}")
        if array.dtype.kind == "f":
            if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
                raise InvalidArgument("log_image: float images must have values in [0, 1]")
            array = (array * 255).round().astype(np.uint8)
        elif array.dtype.kind in "iub":
            if array.size and (array.min() < 0 or array.max() > 255):
                raise InvalidArgument("log_image: integer images must have values in [0, 255]")
            array = array.astype(np.uint8)
        else:
            raise InvalidArgument(f"log_image: unsupported dtype {array.dtype}")
        image = Image.fromarray(array)
    suffix = PurePosixPath(artifact_file).suffix.lower().lstrip(".") or "png"
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(suffix, suffix.upper()))
    return buffer.getvalue()
