"""Studies built on the engine: the Gaussian toy model and the hidden-manifold sweep."""
