"""The `sidjax demo` run: synthetic catalog (2,000 items, 3,000 users), plain SIDs vs PrefixMem.

Command: sidjax compare --config configs/demo.py --workdir runs/demo
"""

from sidjax.config import demo


def get_config():
    return demo()
