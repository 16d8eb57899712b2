"""Scripts that regenerate the paper's figures and numerical checks from :mod:`ttr_stats` (see README.md)."""
