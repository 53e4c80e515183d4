"""`make bench`: the fleet-scale race, qfleet side by side with Argo Rollouts on the same local fleet (docs/performance.md)."""
