"""Amazon Sports 2014 (P5 format, no item text: collaborative item vectors), plain SIDs vs PrefixMem.

Command (from the repository root, with ../shared/data present):
    sidjax compare --config configs/sports.py --workdir runs/sports --match-compute --seeds 3
Result (2026-11-29, 2 CPU cores, partly shared with another job, 28-29 min of training per run; test
split, all 35,598 users; mean ± std of 3 seeds; plain SIDs 2,263 steps, PrefixMem 2,000 steps,
6.93e13 training FLOPs each):
    plain SIDs  R@5 0.0200±0.0007  R@10 0.0341±0.0011  N@5 0.0123±0.0005  N@10 0.0169±0.0006
    PrefixMem   R@5 0.0206±0.0010  R@10 0.0347±0.0011  N@5 0.0130±0.0011  N@10 0.0175±0.0011
    (TIGER, published: 0.0264 / 0.0400 / 0.0181 / 0.0225; see RESULTS.md)
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
        # collaborative SIDs (the rows of RESULTS.md); "text" quantises MiniLM vectors of the
        # LLM-generated keywords of item_keywords.txt instead
        data=DataConfig(source="../shared/data/amazon-sports-2014", max_history=20,
                        item_vectors="collab"),
        sid=SIDConfig(levels=3, codes=64, kmeans_iters=20),
        model=ModelConfig(d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=384,
                          dropout=0.2, prefixmem=PrefixMemConfig(mem_dim=32)),
        train=dataclasses.replace(TrainConfig(), batch_size=128, steps=2000, learning_rate=2e-3,
                                  warmup_steps=100, log_every=100, checkpoint_every=500,
                                  eval_every=500, eval_recall=True,
                                  best_metric="valid/recall@10", best_mode="max"),
        eval=EvalConfig(beam_size=20, batch_size=256),
    )
