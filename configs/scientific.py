"""Amazon Scientific 2018 (LC-Rec JSON; MiniLM vectors of title, brand, categories, description).

Command (from the repository root, with ../shared/data present):
    sidjax compare --config configs/scientific.py --workdir runs/scientific
Results: RESULTS.md.
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
        name="scientific",
        data=DataConfig(source="../shared/data/amazon-scientific-2018", max_history=20),
        sid=SIDConfig(levels=3, codes=64, kmeans_iters=25, reassign=True, split_prefixes=True),
        model=ModelConfig(d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=384,
                          dropout=0.2, prefixmem=PrefixMemConfig(mem_dim=32)),
        train=dataclasses.replace(TrainConfig(), batch_size=128, steps=1000, learning_rate=2e-3,
                                  warmup_steps=100, log_every=100, checkpoint_every=250,
                                  eval_every=250, eval_recall=True,
                                  best_metric="valid/recall@10", best_mode="max"),
        eval=EvalConfig(beam_size=20, batch_size=256),
    )
