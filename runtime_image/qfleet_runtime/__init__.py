"""qfleet's runtime image: the programs the operator's Jobs run (calibrate, evaluate; build comes later)."""
