"""Analysis: representation similarity (linear CKA) and transferability estimators."""
from engine.analysis.estimators import h_score, leep, logme, nce
from engine.analysis.similarity import CKAAccumulator, cka_matrix, linear_cka

__all__ = ["linear_cka", "logme", "leep", "nce", "h_score", "CKAAccumulator", "cka_matrix"]
