"""`make demo`: the whole qfleet story on the local fleet, with the small model and real components.

- `install`: the fleet, the CRD, the chart (its RBAC and ServiceAccount) and the operator as a local process holding
  only that ServiceAccount's token;
- `stories`: the QuantizedModels and what each story waits for;
- `watch`: samples the model's status while a story runs and prints the live rollout table;
- `report`: `demo-report/`: markdown and PNG plots, every number from this run.
"""
