"""The Dagster layer only: assets, checks, resources, schedules and sensors. Thin wrappers over the
library modules in :mod:`labelflow`."""
