"""The pipeline decision: admission, then calibrate -> build -> evaluate, as a pure function of what was observed."""

from qfleet.pipeline.admission import Admission, NodeView, admit
from qfleet.pipeline.decide import Decision, Event, JobState, JobView, Observed, decide

__all__ = ["Admission", "Decision", "Event", "JobState", "JobView", "NodeView", "Observed", "admit", "decide"]
