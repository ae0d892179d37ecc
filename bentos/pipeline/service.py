"""The BentoML service of the pipeline family. The class lives in aimass.serving.services, so
that Ray Serve replicas import exactly this code; AIMASS_SERVE_MODEL (and AIMASS_HOME) name the registered
version it serves.

    AIMASS_SERVE_MODEL=TWO_TOWER/V AIMASS_SERVE_RANKER=SASREC/V bentoml serve service:Pipeline
"""
from aimass.serving import pin_bento
from aimass.serving.services import Pipeline

pin_bento(__file__)  # a built Bento's version, from its pin.json

__all__ = ["Pipeline"]
