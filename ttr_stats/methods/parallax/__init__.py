"""Parallax (:mod:`ttr_stats.regressors.parallax`): run by the kernel smoother's cache methods."""
