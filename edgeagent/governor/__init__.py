"""The governor box: decide how much work the site's sun and battery can pay for."""

from edgeagent.governor.decision import JOB_CLASSES, Decision, JobClass
from edgeagent.governor.forecast import Forecast, Forecaster, clear_sky_ghi
from edgeagent.governor.policy import GovernorMemory, choose_model, decide

__all__ = ["JOB_CLASSES", "Decision", "Forecast", "Forecaster", "GovernorMemory", "JobClass",
           "choose_model", "clear_sky_ghi", "decide"]
