"""The end-to-end demo and its synthetic data (nothing here is needed to use medseg).

Public API (import from the submodules, so ``import medseg.demo`` stays cheap)::

    from medseg.demo.synthetic import make_ct_study   # seeded CT-like abdomen + exact labels
    from medseg.demo.run import run_demo               # what `medseg demo` runs
    from medseg.demo.evaluate import evaluate_lesions  # Dice, lesion detection, volumes
"""
