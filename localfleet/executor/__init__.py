"""A small kubelet for the local fleet: nodes whose pods run as host processes, each pod in a network namespace."""
