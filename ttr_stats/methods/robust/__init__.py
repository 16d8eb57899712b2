"""Robust (Huber / l_p) test-time regression by IRLS (:mod:`ttr_stats.optimizers.robust`)."""
