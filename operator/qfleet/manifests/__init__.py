"""Builders of the children's manifests: plain data in, plain dicts out."""
