"""The local fleet: a real Kubernetes control plane with simulated GPU node pools, for tests and the demo."""
