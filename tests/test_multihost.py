"""Two local processes x 4 CPU devices (jax.distributed over 127.0.0.1, gloo collectives) train
the same losses as one process with 8 devices, and a SIGTERM to one of them stops both at the same
step with one checkpoint (the other would otherwise wait forever in the next collective)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from sidjax import config as C

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def _cfg(mesh_data: int) -> C.Config:
    cfg = C.tiny()
    model = dataclasses.replace(cfg.model, d_model=32, num_layers=1, num_heads=2, head_dim=16,
                                mlp_dim=64, dropout=0.0)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_items=120, num_users=160, max_history=6),
        model=model, train=dataclasses.replace(cfg.train, batch_size=16, warmup_steps=1,
                                               mesh_data=mesh_data))


def _losses() -> list[float]:
    """Loss of each of the first STEPS steps on a mesh over all (global) devices."""
    from sidjax import run as E
    from sidjax.data.pipeline import train_dataset
    from sidjax.train.loop import init_state, make_train_step

    cfg = _cfg(mesh_data=-1)
    prep = E.prepare(cfg, None, log=lambda _: None)
    # each process reads its own share of every global batch of 16 (dealt by the pipeline)
    data = train_dataset(prep.split.train, prep.sids.codes, prep.vocab, max_history=6,
                         batch_size=16 // jax.process_count(), seed=0)
    graphdef, params, opt_state, tx, part, shardings = init_state(
        E.build_model(cfg, prep.vocab), cfg.train)
    step_fn = make_train_step(graphdef, tx, prep.vocab, False, partitioner=part,
                              state_shardings=shardings)
    losses = []
    for step in range(STEPS):
        params, opt_state, m = step_fn(params, opt_state, part.shard_batch(data[step]), step,
                                       jax.random.key(0))
        losses.append(float(m["loss"]))
    return losses


def test_two_processes_match_one_process_with_eight_devices(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDJAX_")}
    env.update(LOGDIR=str(tmp_path), SIDJAX_PORT=str(20000 + os.getpid() % 20000))
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / "local_multiprocess.sh"), "2", "4", sys.executable,
         str(Path(__file__)), str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=150)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("process_*.log")))
    assert proc.returncode == 0, proc.stderr + logs
    results = [json.loads((tmp_path / f"losses_{i}.json").read_text()) for i in range(2)]
    assert [r["process_count"] for r in results] == [2, 2]
    assert [r["local_devices"] for r in results] == [4, 4]
    assert results[0]["losses"] == results[1]["losses"]
    assert jax.device_count() == 8
    np.testing.assert_allclose(results[0]["losses"], _losses(), rtol=2e-5)
    # process 1 got SIGTERM after step 3: both stop at the next agreement boundary (log_every 2)
    assert [r["stopped_at"] for r in results] == [4, 4], logs
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == ["4"]


def _train_until_sigterm(index: int, workdir: Path):
    """train_model for 8 steps; process 1 sends itself SIGTERM after step 3. Returns the step
    the run stopped at (None if it was not stopped)."""
    from sidjax import run as E
    from sidjax.train.signals import Preempted

    cfg = _cfg(mesh_data=-1)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=8, log_every=2, checkpoint_every=100, tensorboard=False))
    prep = E.prepare(cfg, None, log=lambda _: None)

    def sigterm(step, _metrics):
        if index == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        E.train_model(prep, workdir, log=lambda _: None, progress=sigterm)
    except Preempted as err:
        return err.step
    return None


if __name__ == "__main__":
    from sidjax.train.distributed import maybe_initialize

    index, count = maybe_initialize()
    out = {"process_count": count, "local_devices": jax.local_device_count(),
           "losses": _losses(), "stopped_at": _train_until_sigterm(index, Path(sys.argv[1], "run"))}
    Path(sys.argv[1], f"losses_{index}.json").write_text(json.dumps(out))
