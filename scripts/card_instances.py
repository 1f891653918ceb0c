"""Change a shipped instance model's post-processing (its card's ``instances`` entry) without
retraining: the weights stay byte-for-byte the same, the card records the change.

The new settings must come from a committed benchmark (``--source``, e.g. the results file that
chose them); the previous settings and the source are appended to ``training.card_edits``.

Usage (repository root):
    .venv/bin/python scripts/card_instances.py nuclei \
        '{"method": "boundary", "seeds": "distance", "seed_threshold": 0.5, "h": 0.5,
          "sigma": 1.0, "min_size": 32}' --source benchmarks/results/nuclei_postprocess.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from medseg.io.atomic import atomic_write_text
from medseg.model_card import ModelCard, load_model, save_model
from medseg.models import MODELS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="shipped model name (medseg/models/NAME.safetensors)")
    parser.add_argument("instances", help="the new instances entry, as JSON")
    parser.add_argument("--source", required=True, help="benchmark output that chose it")
    args = parser.parse_args()
    path = MODELS_DIR / f"{args.name}.safetensors"
    model, card = load_model(path)
    new = json.loads(args.instances)
    if card.instances and "method" not in new:  # the method follows the weights' classes
        new = {"method": card.instances.get("method", "boundary"), **new}
    ModelCard(**{**{f.name: getattr(card, f.name) for f in dataclasses.fields(card)},
                 "instances": new})  # validated before anything is written
    edits = list(card.training.get("card_edits", []))
    edits.append({"field": "instances", "before": card.instances, "after": new,
                  "source": args.source, "at": time.strftime("%Y-%m-%d")})
    card.instances = new
    card.training = {**card.training, "card_edits": edits}
    if card.training.get("weights_dtype") == "float16":
        model = model.half()
    save_model(path, model, card)
    atomic_write_text(path.with_suffix(".json"), json.dumps(card.to_dict(), indent=2,
                                                            sort_keys=True))
    print(f"{args.name}: instances {edits[-1]['before']} -> {new}")


if __name__ == "__main__":
    main()
