"""The clustering-targets family: prediction of cluster ids of the input. ``hubert.py``: HuBERT (span masking x
k-means cluster ids x cross-entropy; the labels come from the audio modality, ``modalities/audio_labels.py``, and
the generic k-means, ``selfsup/kmeans.py``); sizes in ``sizes.py``, wiring in ``build.py``, the conversion to
``HubertModel`` in ``hf_hubert.py``. ``deepcluster.py``: DeepCluster on any encoder's pooled features (views, as
the two-view family; its image sizes and presets in its own file, on ``objectives/two_view``'s bases), re-clustered
with ``selfsup/kmeans.py``'s ``lloyd`` at every epoch's start."""
