"""The speech-quantised family: contrastive prediction of quantised latents. ``wav2vec2.py``: wav2vec 2.0 (span
masking x Gumbel-quantised conv features x contrastive + diversity); sizes in ``sizes.py``, the wiring of the audio
adapter and the Transformer in ``build.py``, the conversion to ``Wav2Vec2ForPreTraining`` in ``hf_wav2vec2.py``."""
