"""Group, version and names of the QuantizedModel resource."""

GROUP = "qfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QuantizedModel"
PLURAL = "quantizedmodels"
SINGULAR = "quantizedmodel"
SHORT_NAMES = ("qm",)
CATEGORIES = ("qfleet",)
