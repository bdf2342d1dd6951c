"""Batch scoring of whole files: the same bundle, encoding and runtime as the service."""
