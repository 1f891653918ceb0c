"""Models shipped with medseg: ``medseg/models/<name>.safetensors`` (weights + model card).

Users name a shipped model (``--model hippocampus``) or pass the path of any ``.safetensors``
model file; :func:`resolve_model` turns either into a path.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ModelError

MODELS_DIR = Path(__file__).resolve().parent
MODEL_SUFFIX = ".safetensors"


def list_models() -> list[str]:
    """Names of the models shipped in the package, sorted.

    Examples:
        >>> all(isinstance(name, str) for name in list_models())
        True
    """
    return sorted(p.name[: -len(MODEL_SUFFIX)] for p in MODELS_DIR.glob(f"*{MODEL_SUFFIX}")
                  if p.is_file() and not p.name.startswith("."))


def resolve_model(name_or_path: str | Path) -> Path:
    """The model file for a shipped model's name or a path to a model file.

    A value that names an existing file is taken as a path; otherwise, if it looks like a
    name (no directory separator, no suffix), it is looked up among the shipped models.

    Raises:
        ModelError: Neither an existing file nor a shipped model name; the message lists the
            shipped models.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    if candidate.is_dir():
        raise ModelError(f"{candidate} is a folder; --model needs a {MODEL_SUFFIX} file or the "
                         "name of a shipped model")
    text = str(name_or_path)
    looks_like_name = "/" not in text and "\\" not in text and not text.endswith(MODEL_SUFFIX)
    if looks_like_name:
        shipped = MODELS_DIR / f"{text}{MODEL_SUFFIX}"
        if shipped.is_file():
            return shipped
    available = ", ".join(list_models()) or "none shipped in this installation"
    what = "unknown model name" if looks_like_name else "model file not found"
    raise ModelError(f"{what}: {text!r} (shipped models: {available}; or pass the path of a "
                     f"{MODEL_SUFFIX} model file)")
