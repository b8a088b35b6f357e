"""Datasets: building correlated pairs into .beton files, reading them, manifests, statistics."""
