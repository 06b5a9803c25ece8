"""Amazon Scientific 2018 (LC-Rec JSON; MiniLM vectors of title, brand, categories, description).

Command (from the repository root, with ../shared/data present):
    sidjax compare --config configs/scientific.py --workdir runs/scientific --match-compute --seeds 3
Result (2026-11-29, 2 CPU cores shared with another job, ~12.5 min of training per run; test split,
8,317 users; mean ± std of 3 seeds; plain SIDs 1,136 steps, PrefixMem 1,000 steps, 2.52e13 training
FLOPs each):
    plain SIDs  R@5 0.0535±0.0004  R@10 0.0755±0.0016  N@5 0.0387±0.0001  N@10 0.0458±0.0005
    PrefixMem   R@5 0.0574±0.0031  R@10 0.0786±0.0011  N@5 0.0428±0.0019  N@10 0.0496±0.0012
    (popularity 0.0158 / 0.0231 / 0.0139 / 0.0162; SASRec-style 0.0503 / 0.0690 / 0.0395 / 0.0456;
    see RESULTS.md)
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
