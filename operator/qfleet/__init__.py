"""qfleet: a Kubernetes operator for fleets of quantized LLM inference servers.

The package is layered (see docs/architecture.md): pure tables and the typed API at the bottom,
pure decisions above them, the Kubernetes and Prometheus clients above those, and the Kopf
handlers and the command line at the top.
"""

__version__ = "0.1.0"
