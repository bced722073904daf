"""The named sizes of every objective on concrete parts (torchtune's model builders): each picks a modality's
adapter, a backbone and the wiring its family's conversion uses (``compose_*`` in ``objectives/<family>/hf_*.py``),
with keyword overrides winning. This is composition, as the recipes' own, so it lives beside them: the objectives
themselves never import a modality (``tests/test_layers.py``)."""
