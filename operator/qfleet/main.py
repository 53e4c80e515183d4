"""The operator's entry point: `kopf run -m qfleet.main --all-namespaces` (or `-n NAMESPACE`)."""

from qfleet import handlers  # noqa: F401  (registers the handlers with Kopf)
