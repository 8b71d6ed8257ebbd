# Stage: FLAP and Contrastive-FLAP head pruning sweeps, cliff selection, the merged head set,
# and APP (path patching restricted to it). Issue 5; nothing here yet.
