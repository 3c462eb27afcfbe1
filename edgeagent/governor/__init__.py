"""The governor box: decide how much work the site's sun and battery can pay for."""

from edgeagent.governor.policy import Decision, choose_model, decide

__all__ = ["Decision", "choose_model", "decide"]
