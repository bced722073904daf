"""The contrastive image-text family. ``clip.py``: CLIP (softmax InfoNCE) and SigLIP (sigmoid loss) over two towers
and the global batch; losses in ``losses.py``, sizes in ``sizes.py``, the wiring in ``build.py``, the conversions to
``CLIPModel`` / ``SiglipModel`` in ``hf_clip.py``."""
