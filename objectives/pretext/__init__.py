"""The pretext family: predict which transformation the data side applied to the input (RotNet's rotations, ...),
each method in its own file. An objective here sees views and their labels, never how they were made: the
transformations are the modality's (``selfsup.modalities.image_views.rotation_transforms`` for images)."""
