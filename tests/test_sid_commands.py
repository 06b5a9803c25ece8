import argparse
import hashlib
import json

import numpy as np
import pytest

from sidjax.cli.sids import add_sids_parser, run_sids
from sidjax.sid.artifacts import build_sids, inspect_sids, vectors_sha256
from sidjax.sid.quantizer import load_quantizer
from sidjax.sid.table import load_sid_table
from sidjax.sid.trie import load_trie


def _vectors(n=160, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, d)) * 5
    return (centers[np.arange(n) % 4] + rng.normal(size=(n, d))).astype(np.float32)


def test_build_and_inspect(tmp_path):
    x = _vectors()
    ids = [f"item{i}" for i in range(160)]
    titles = [f"{['red', 'blue', 'green', 'gold'][i % 4]} thing {i}" for i in range(160)]
    np.save(tmp_path / "v.npy", x)
    stats = build_sids(tmp_path / "v.npy", ids, levels=2, codes=(4, 8), out_dir=tmp_path / "out",
                       iters=5, item_titles=titles, log=lambda _: None)
    out = tmp_path / "out"
    table = load_sid_table(out / "sids.npz")
    assert table.item_ids == tuple(ids) and len(np.unique(table.codes, axis=0)) == 160
    assert load_quantizer(out / "quantizer.npz", dim=6).config.codes == (4, 8)
    trie = load_trie(out / "trie.npz")
    assert all(trie.item_of(table.codes[i]) == i for i in range(0, 160, 7))
    saved = json.loads((out / "sid_stats.json").read_text())
    assert saved["vectors_sha256"] == stats["vectors_sha256"] == vectors_sha256(x)
    assert saved["diagnostics"]["levels"][0]["utilization"] == 1.0
    assert not list(out.glob("*.tmp*"))
    text = inspect_sids(out)
    assert "| level |" in text and "thing" in text
    png = (out / "code_usage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the 4 blobs (colours) are the level-1 codes: every listed item of a branch has one colour
    for branch in text.split("example branches:")[1].split("\n(")[1:]:
        colours = {c for c in ("red", "blue", "green", "gold") if c in branch}
        assert len(colours) == 1, branch
    with pytest.raises(FileNotFoundError, match="sid_stats.json"):
        inspect_sids(tmp_path)


def test_build_same_seed_same_table(tmp_path):
    x = _vectors()
    ids = [str(i) for i in range(160)]
    for name in ("a", "b"):
        build_sids(x, ids, levels=2, codes=4, out_dir=tmp_path / name, iters=4, log=lambda _: None)
    digest = [hashlib.sha256((tmp_path / n / "sids.npz").read_bytes()).hexdigest() for n in "ab"]
    assert load_sid_table(tmp_path / "a" / "sids.npz").content_hash() == \
        load_sid_table(tmp_path / "b" / "sids.npz").content_hash() and digest[0]


def test_build_errors(tmp_path):
    x = _vectors()
    with pytest.raises(ValueError, match="method"):
        build_sids(x, list(range(160)), method="vq", out_dir=tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        build_sids(x, [0] * 160, out_dir=tmp_path, codes=4)


def test_cli_parser_on_a_movielens_folder(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "ml"
    data.mkdir()
    (data / "u.data").write_text("".join(f"{u}\t{(u * 3 + t) % 40 + 1}\t5\t{t}\n"
                                         for u in range(1, 61) for t in range(6)))
    (data / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x" + "|0" * 19 + "\n"
                                         for i in range(1, 41)))
    np.savez(tmp_path / "vec.npz", ids=np.array([str(i) for i in range(1, 41)]),
             vectors=rng.normal(size=(40, 5)).astype(np.float32))
    parser = argparse.ArgumentParser()
    add_sids_parser(parser.add_subparsers(dest="command"))
    base = ["sids", "build", "--data", str(data), "--levels", "2", "--codes", "4,8", "--iters", "3"]
    assert run_sids(parser.parse_args(base + ["--vectors", str(tmp_path / "vec.npz"),
                                              "--out", str(tmp_path / "a")])) == 0
    assert load_sid_table(tmp_path / "a" / "sids.npz").num_items == 40
    assert run_sids(parser.parse_args(base + ["--out", str(tmp_path / "b")])) == 0  # collaborative
    stats = json.loads((tmp_path / "b" / "sid_stats.json").read_text())
    assert stats["dim"] == 64 and stats["num_items"] == 40
    assert run_sids(parser.parse_args(["sids", "inspect", str(tmp_path / "a"), "--no-plot"])) == 0
    assert not (tmp_path / "a" / "code_usage.png").exists()
    assert "Movie" in inspect_sids(tmp_path / "a", plot=False)


def test_cli_on_the_synthetic_catalog(tmp_path):
    parser = argparse.ArgumentParser()
    add_sids_parser(parser.add_subparsers(dest="command"))
    args = ["sids", "build", "--data", "synthetic", "--levels", "3", "--codes", "8,16,32",
            "--iters", "4"]
    assert run_sids(parser.parse_args(args + ["--out", str(tmp_path / "s")])) == 0
    stats = json.loads((tmp_path / "s" / "sid_stats.json").read_text())
    assert stats["num_items"] == 2000 and stats["dim"] == 64  # the catalog's own content vectors
    assert not stats["extra_level"] and stats["diagnostics"]["unique_after"]
    assert stats["diagnostics"]["items_split_off"] > 0
    assert run_sids(parser.parse_args(args + ["--no-split", "--out", str(tmp_path / "n")])) == 0
    assert json.loads((tmp_path / "n" / "sid_stats.json").read_text())["extra_level"]
    assert " for " in inspect_sids(tmp_path / "s", plot=False)  # titles "<adj> <mid> <fine> for <top>"
    vae = parser.parse_args(["sids", "build", "--data", "x", "--method", "rqvae", "--estimator", "ste",
                             "--beta", "0.5", "--out", "o"])
    assert (vae.estimator, vae.beta, vae.steps) == ("ste", 0.5, 2000)
