"""Trajectory matching (``dd_loss: mtt``): the loss (:mod:`.loss`) and the expert
trajectories it matches, trained once and cached (:mod:`.buffers`)."""

from .loss import MTT

__all__ = ["MTT"]
