"""Amazon Sports 2014 (P5 format, no item text: collaborative item vectors), plain SIDs vs PrefixMem.

Command (from the repository root, with ../shared/data present):
    sidjax compare --config configs/sports.py --workdir runs/sports
Results: see the issue notes / RESULTS.md once tuned; this preset is a first, untuned setting.
"""

import dataclasses

from sidjax.config import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PrefixMemConfig,
    SIDConfig,
    TrainConfig,
)


def get_config() -> Config:
    return Config(
        name="sports",
        data=DataConfig(source="../shared/data/amazon-sports-2014", max_history=20),
        sid=SIDConfig(levels=3, codes=64, kmeans_iters=20),
        model=ModelConfig(d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=384,
                          dropout=0.2, prefixmem=PrefixMemConfig(mem_dim=32)),
        train=dataclasses.replace(TrainConfig(), batch_size=128, steps=2000, learning_rate=2e-3,
                                  warmup_steps=100, log_every=100, checkpoint_every=500,
                                  eval_every=500, eval_recall=True,
                                  best_metric="valid/recall@10", best_mode="max"),
        eval=EvalConfig(beam_size=20, batch_size=256),
    )
