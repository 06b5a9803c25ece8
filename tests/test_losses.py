"""Label-smoothed cross-entropy against a NumPy reference, for the SID and the item loss."""

import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.nn.losses import smoothed_nll
from sidjax.nn.sasrec import item_loss
from sidjax.tokens import SIDVocab
from sidjax.train.loop import sid_loss


def _reference(logits, label, allowed, eps):
    z = np.where(allowed, logits, -np.inf)
    logp = z - np.log(np.sum(np.exp(z[allowed])))
    target = np.where(allowed, eps / allowed.sum(), 0.0)
    target[label] += 1.0 - eps
    return -np.sum(target[allowed] * logp[allowed])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothed_nll_matches_numpy(eps):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype(np.float32)
    labels = np.array([0, 3, 6, 2])
    allowed = np.ones((4, 7), bool)
    allowed[1, :2] = allowed[2, 5] = False
    got = smoothed_nll(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(allowed), eps)
    want = [_reference(logits[i], labels[i], allowed[i], eps) for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    everything = smoothed_nll(jnp.asarray(logits), jnp.asarray(labels), None, eps)
    np.testing.assert_allclose(everything, [_reference(logits[i], labels[i], np.ones(7, bool), eps)
                                            for i in range(4)], rtol=1e-5)


def test_sid_and_item_losses_smooth_over_their_own_classes():
    vocab = SIDVocab((3, 4))
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 3, vocab.size)).astype(np.float32))
    targets = jnp.asarray([[2, 5, 0], [4, 8, 1]])  # level-1, level-2 and non-SID targets
    plain, metrics = sid_loss(logits, targets, vocab)
    smooth, smooth_metrics = sid_loss(logits, targets, vocab, label_smoothing=0.2)
    assert float(smooth_metrics["nll"]) == pytest.approx(float(plain))
    mask = vocab.level_mask()
    want = np.mean([_reference(np.asarray(logits[b, t]), int(targets[b, t]),
                               mask[1 if targets[b, t] < 5 else 2], 0.2)
                    for b, t in [(0, 0), (0, 1), (1, 0), (1, 1)]])
    assert float(smooth) == pytest.approx(want, rel=1e-5)
    items = jnp.asarray(rng.normal(size=(1, 2, 5)).astype(np.float32))
    loss, _ = item_loss(items, jnp.asarray([[3, 0]]), label_smoothing=0.3)
    assert float(loss) == pytest.approx(_reference(np.asarray(items[0, 0]), 2,
                                                   np.ones(5, bool), 0.3), rel=1e-5)
