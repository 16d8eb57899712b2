"""DeltaFormer (:mod:`ttr_stats.regressors.deltaformer`): the growing cache of corrected values (reference)
and the dense triangular solve for them."""
