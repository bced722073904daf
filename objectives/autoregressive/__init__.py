"""The autoregressive family: next-token prediction. ``clm.py``: GPT-2-style causal language modelling (a tied
head, a fused chunked loss, sampling with a key/value cache); sizes and nanoGPT's CPU preset in ``sizes.py``, the
wiring in ``build.py``, the conversion to ``GPT2LMHeadModel`` in ``hf_gpt2.py``."""
