"""PaTH attention (:mod:`ttr_stats.regressors.path`): the transported-key cache (reference) and its chunked
form."""
