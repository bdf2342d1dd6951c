"""Batch scoring of files, with the service's bundles, encoding and runtime."""
