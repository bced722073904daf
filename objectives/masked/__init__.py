"""The masked-prediction family: masker x target x loss.

* ``mlm.py``: BERT (token masking 80/10/10 x token ids x cross-entropy);
* ``mae.py``: MAE (75 % of the tokens dropped x patch pixels x MSE) and, with its graph options, GraphMAE (masked
  node features replaced by a mask token x the node features x scaled cosine error): one class;
* ``data2vec.py``: data2vec (span / random masking x an EMA teacher's averaged top-K layers x L2 / smooth L1), on
  audio, text and graphs alike.

Sizes and fixed settings in ``sizes.py``; the wiring of concrete parts in ``build.py``; conversions to
``transformers`` in ``hf_*.py``. The maskers are shared with the speech families (``objectives/masking.py``).
"""
