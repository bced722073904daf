"""Time series: patch tokens per channel (``adapter``), data loading and collation (``data``)."""
from selfsup.modalities.timeseries.adapter import (OBSERVED, PAST_VALUES, SeriesAdapter, SeriesConfig, num_patches,
                                                   patchify, patchtst_sincos, std_scale)

__all__ = ["SeriesAdapter", "SeriesConfig", "PAST_VALUES", "OBSERVED", "patchify", "std_scale", "patchtst_sincos",
           "num_patches"]
