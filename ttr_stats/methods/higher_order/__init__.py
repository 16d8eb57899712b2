"""Second-order linear attention (:mod:`ttr_stats.optimizers.higher_order`)."""
