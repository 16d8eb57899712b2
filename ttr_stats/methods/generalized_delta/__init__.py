"""The ``"generalized_delta"`` family (issue 13): KDA, GDN-2, DPLR / RWKV-7, the preconditioned delta rule
and the gated Oja rule (:mod:`ttr_stats.optimizers.generalized_delta`). Only the recurrent reference is
registered (the chunked delta method runs scalar decay and LMS's single key)."""

from .. import registry

# registry.FAMILIES names the known families; this family adds itself here so that registry.py (edited
# concurrently for the other issue-13 families) need not change. Move the name into FAMILIES there.
if "generalized_delta" not in registry.FAMILIES:
    registry.FAMILIES = registry.FAMILIES + ("generalized_delta",)
