"""Models shipped with medseg (``medseg/models/<name>.safetensors``: weights + model card) and
the user's own models (fine-tuned ones), in :func:`user_models_dir`.

Users name a model (``--model hippocampus``, ``--model nuclei-ft-2026-12-07``) or pass the path
of any ``.safetensors`` model file; :func:`resolve_model` turns either into a path. A shipped
model's name wins over a user model of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import ModelError

MODELS_DIR = Path(__file__).resolve().parent
MODEL_SUFFIX = ".safetensors"
#: Environment variable naming the folder of the user's own models.
USER_MODELS_ENV = "MEDSEG_MODELS_DIR"


def user_models_dir() -> Path:
    """The folder of the user's own models: ``$MEDSEG_MODELS_DIR``, else ``~/.medseg/models``.

    Fine-tuned models go there unless told otherwise; they are listed and found by name like
    the shipped ones. The folder need not exist.

    Examples:
        >>> import os
        >>> os.environ["MEDSEG_MODELS_DIR"] = "/tmp/my-models"
        >>> str(user_models_dir())
        '/tmp/my-models'
        >>> del os.environ["MEDSEG_MODELS_DIR"]
    """
    configured = os.environ.get(USER_MODELS_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".medseg" / "models"


def _names_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [p.name[: -len(MODEL_SUFFIX)] for p in folder.glob(f"*{MODEL_SUFFIX}")
            if p.is_file() and not p.name.startswith(".")]


def list_models(*, user: bool = True) -> list[str]:
    """Names of the shipped models and (``user``) of the user's own models, sorted.

    Examples:
        >>> all(isinstance(name, str) for name in list_models())
        True
    """
    names = set(_names_in(MODELS_DIR))
    if user:
        names.update(_names_in(user_models_dir()))
    return sorted(names)


def resolve_model(name_or_path: str | Path) -> Path:
    """The model file for a model's name (shipped, then the user's) or a model file's path.

    A value that names an existing file is taken as a path; otherwise, if it looks like a
    name (no directory separator, no suffix), it is looked up among the shipped models, then
    in :func:`user_models_dir`.

    Raises:
        ModelError: Neither an existing file nor a known model name; the message lists the
            models.
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
        for folder in (MODELS_DIR, user_models_dir()):
            found = folder / f"{text}{MODEL_SUFFIX}"
            if found.is_file():
                return found.resolve() if folder is not MODELS_DIR else found
    shipped = ", ".join(list_models(user=False)) or "none shipped in this installation"
    own = ", ".join(sorted(_names_in(user_models_dir()))) or "none"
    what = "unknown model name" if looks_like_name else "model file not found"
    raise ModelError(f"{what}: {text!r} (shipped models: {shipped}; your models in "
                     f"{user_models_dir()}: {own}; or pass the path of a {MODEL_SUFFIX} model "
                     "file)")
