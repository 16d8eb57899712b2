"""The Kalman-filter family (:mod:`ttr_stats.optimizers.kalman`): the generic loop is its reference."""
