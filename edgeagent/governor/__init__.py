"""The governor box: decide how much work the site's sun and battery can pay for."""

from edgeagent.governor.policy import Decision, decide

__all__ = ["Decision", "decide"]
