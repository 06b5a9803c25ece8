"""A tiny run for smoke tests (about a minute on 2 CPU cores for both models).

Command: sidjax compare --config configs/tiny.py --workdir runs/tiny
"""

from sidjax.config import tiny


def get_config():
    return tiny()
