"""Codecs for the field's protocols (KServe V2, MLflow) in front of the same scorer as /predict."""
