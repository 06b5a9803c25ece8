"""Amazon Toys 2014 (LC-Rec JSON; MiniLM vectors of title and category path), plain SIDs vs PrefixMem.

TIGER's third benchmark (Rajput et al. 2023, Table 1: R@5 0.0521, R@10 0.0712, N@5 0.0371,
N@10 0.0432). Nothing here depends on facts of Toys beyond its format: SID codes per level are a
fixed 64 and collisions are removed by reassignment, so another LC-Rec JSON dataset runs with only
``data.source`` changed.

Command (from the repository root, with ../shared/data present):
    sidjax compare --config configs/toys.py --workdir runs/toys --match-compute --seeds 3
Result (2026-12-01, 2 shared CPU cores, PrefixMem only, 1 seed, 3,000 steps in 62 min, best
validation step 2,000; test split, 19,412 users): R@5 0.0275  R@10 0.0437  N@5 0.0168  N@10 0.0220,
acc L3 0.2525 (prefix-frequency prior 0.2399). TIGER: 0.0521 / 0.0712 / 0.0371 / 0.0432.
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
        name="toys",
        data=DataConfig(source="../shared/data/amazon-toys-2014", max_history=20),
        sid=SIDConfig(levels=3, codes=64, kmeans_iters=25, reassign=True, split_prefixes=True),
        model=ModelConfig(d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=384,
                          dropout=0.2, prefixmem=PrefixMemConfig(mem_dim=32)),
        train=dataclasses.replace(TrainConfig(), batch_size=128, steps=3000, learning_rate=2e-3,
                                  warmup_steps=100, log_every=100, checkpoint_every=500,
                                  eval_every=500, eval_recall=True,
                                  best_metric="valid/recall@10", best_mode="max"),
        eval=EvalConfig(beam_size=20, batch_size=256),
    )
