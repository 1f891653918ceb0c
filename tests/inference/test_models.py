"""The model registry: shipped names and model file paths."""

from __future__ import annotations

from pathlib import Path

import pytest

import medseg.models as models
from medseg.errors import ModelError


def test_names_resolve_to_shipped_files_and_paths_to_themselves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_file: Path) -> None:
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    (tmp_path / "liver.safetensors").write_bytes(b"x")
    (tmp_path / ".hidden.safetensors").write_bytes(b"x")
    (tmp_path / "notes.json").write_text("{}")
    assert models.list_models() == ["liver"]
    assert models.resolve_model("liver") == tmp_path / "liver.safetensors"
    assert models.resolve_model(str(tiny_model_file)) == tiny_model_file.resolve()
    with pytest.raises(ModelError, match=r"^unknown model name: 'lung' \(shipped models: liver;"):
        models.resolve_model("lung")
    with pytest.raises(ModelError, match=r"is a folder; --model needs a \.safetensors file"):
        models.resolve_model(tmp_path)


def test_the_shipped_hippocampus_model_loads() -> None:
    if "hippocampus" not in models.list_models():
        pytest.skip("no hippocampus model shipped in this checkout")
    from medseg.model_card import read_model_card

    card = read_model_card(models.resolve_model("hippocampus"))
    assert card.num_classes == 3 and card.spatial_dims == 3


def test_user_models_are_listed_and_found_by_name(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "mine"))
    assert models.user_models_dir() == tmp_path / "mine"
    assert "nuclei-ft" not in models.list_models()
    (tmp_path / "mine" / "candidates").mkdir(parents=True)
    shutil.copy(models.resolve_model("nuclei"), tmp_path / "mine" / "nuclei-ft.safetensors")
    shutil.copy(models.resolve_model("nuclei"),
                tmp_path / "mine" / "candidates" / "x.candidate.safetensors")
    assert "nuclei-ft" in models.list_models() and "nuclei-ft" not in models.list_models(
        user=False)
    assert not any("candidate" in n for n in models.list_models())
    assert models.resolve_model("nuclei-ft") == tmp_path / "mine" / "nuclei-ft.safetensors"
    with pytest.raises(ModelError, match=r"your models in .*mine: nuclei-ft;"):
        models.resolve_model("nothing-like-it")
