"""The predictive family: predict one part of an example from another in a latent space, contrastively (CPC's
future latents from a context of the past), each method in its own file. An objective here sees the encoder's
latents (one vector per patch view, or the encoder's token map), never how the data side cut them: the patches are
the modality's (``selfsup.modalities.image_views.PatchGrid`` for images)."""
"""The predictive family: contrastive prediction of one part of an example from another (CPC, Deep InfoMax), each
method in its own file."""
