"""The BentoML service of the ease family. The class lives in aimass.serving.services, so
that Ray Serve replicas import exactly this code; AIMASS_SERVE_MODEL (and AIMASS_HOME) name the registered
version it serves.

    AIMASS_SERVE_MODEL=NAME/VERSION bentoml serve service:EASE --host 127.0.0.1
"""
from aimass.serving import pin_bento
from aimass.serving.services import EASE

pin_bento(__file__)  # a built Bento's version, from its pin.json

__all__ = ["EASE"]
