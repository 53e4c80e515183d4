"""The pipeline decision: admission, then calibrate -> build -> evaluate, as a pure function of what was observed."""

from qfleet.pipeline.admission import Admission, NodeView, admit
from qfleet.pipeline.decide import decide
from qfleet.pipeline.records import JobState, JobView
from qfleet.pipeline.visit import Decision, Event, Observed

__all__ = ["Admission", "Decision", "Event", "JobState", "JobView", "NodeView", "Observed", "admit", "decide"]
