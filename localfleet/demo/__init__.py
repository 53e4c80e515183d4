"""`make demo`: the whole qfleet story on the local fleet, with the small model and real components.

- `install`: the fleet, the CRD, the chart (its RBAC and ServiceAccount) and the operator as a local process holding
  only that ServiceAccount's token;
- `manifests`: the QuantizedModels, their steps and gates, and how long each story may wait;
- `stories`: what each story does and waits for (`story_actions`: the steps they share; `story_result`: what each
  one reports);
- `watch`: samples the model's status while a story runs and prints the live rollout table;
- `report`: `demo-report/`: markdown and PNG plots, every number from this run.
"""
