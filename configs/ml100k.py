"""MovieLens-100K (943 users, 1,682 movies; MiniLM vectors of title + genres), plain SIDs vs PrefixMem.

Command (from the repository root, with ../shared/data present):
    sidjax compare --config configs/ml100k.py --workdir runs/ml100k --match-compute --seeds 3
Result (2026-11-29, 2 shared CPU cores, 78 min wall; test split, 943 users; mean ± std of 3 seeds;
plain SIDs 448 steps, PrefixMem 400 steps, 1.86e13 training FLOPs each):
    plain SIDs  R@5 0.0491±0.0006  R@10 0.0884±0.0040  N@5 0.0299±0.0012  N@10 0.0426±0.0024
    PrefixMem   R@5 0.0523±0.0088  R@10 0.0990±0.0074  N@5 0.0306±0.0042  N@10 0.0456±0.0033
SASRec row: configs/ml100k_sasrec.py. Details: RESULTS.md.
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
        name="ml100k",
        data=DataConfig(source="../shared/data/movielens-100k", max_history=50),
        sid=SIDConfig(levels=3, codes=32, kmeans_iters=25),
        model=ModelConfig(d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=384,
                          dropout=0.2, prefixmem=PrefixMemConfig(mem_dim=32)),
        train=dataclasses.replace(TrainConfig(), batch_size=64, steps=400, learning_rate=3e-3,
                                  warmup_steps=50, log_every=50, checkpoint_every=100,
                                  eval_every=100, eval_recall=True,
                                  best_metric="valid/recall@10", best_mode="max"),
        eval=EvalConfig(beam_size=20, batch_size=256),
    )
