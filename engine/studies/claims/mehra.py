"""Placeholder: this paper's claims are being written (engine.studies.claims.base)."""
CLAIMS = ()
