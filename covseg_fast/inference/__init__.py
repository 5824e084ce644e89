"""Batch inference on CT volumes: lung mask, the screening pipeline, reports."""
