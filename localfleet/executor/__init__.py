"""A small kubelet for the local fleet: nodes whose pods run as host processes, each pod in a network namespace.

- `kubelet`: the executor's loop: nodes and their Leases, the pods bound to them, its state file, `cleanup`;
- `pod_lifecycle`: a pod set up, its containers supervised and restarted, and its termination;
- `pod_status`: the pod status it reports; `pod_runs`: what it remembers of each pod and container;
- `podspec`, `probes`, `netns`, `shim`: a container's env and mounts, its probes, the pods' networks, the shim.
"""
