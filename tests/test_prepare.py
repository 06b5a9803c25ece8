"""`sidjax prepare`: prepared folders on real and written data, reproducibility, bad input."""

import argparse
import json

import numpy as np
import pytest
from conftest import shared_dataset, write_files

from sidjax.cli import prepare as prepare_cli
from sidjax.data import prepare
from sidjax.data.prepare import load_prepared, prepare_dataset, render_texts
from sidjax.data.sources import load_dataset, read_lcrec
from sidjax.data.split import leave_one_out

_write = write_files


def _p5(root, lines, items=6):
    maps = {
        "id2user": {str(u): f"U{u}" for u in range(1, 20)},
        "id2item": {str(i): f"A{i:03d}" for i in range(1, items + 1)},
    }
    return _write(root, {"sequential_data.txt": "\n".join(lines) + "\n",
                         "datamaps.json": json.dumps(maps)})


P5_LINES = ["1 1 2 3 4", "2 2 3 4 5 6", "3 5 6 1", "4 1 2", "5 3 3 4 5 1"]


def _nothing_left(parent, out):
    assert not out.exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_prepared_folder_round_trip_and_counts(tmp_path):
    src = _p5(tmp_path / "src", P5_LINES)
    out = tmp_path / "prep"
    meta = prepare_dataset(src, out, vectors="collab", vector_dim=4)
    assert sorted(p.name for p in out.iterdir()) == sorted([*prepare.FILES, "dataset.json"])
    # user 4 has 2 items (dropped); user 5 logs item 3 twice in a row (one event dropped)
    assert meta["dropped"] == {"duplicate_events": 1, "short_users": 1}
    assert meta["counts"] == {"users": 4, "items": 6, "interactions": 16, "train_interactions": 8,
                              "valid": 4, "test": 4}
    assert meta["provenance"]["files"]["sequential_data.txt"]["sha256"]
    data = load_prepared(out)
    assert data.user_ids == ["U1", "U2", "U3", "U5"]
    assert data.item_ids == [f"A{i:03d}" for i in range(1, 7)]
    expected = [[0, 1, 2, 3], [1, 2, 3, 4, 5], [4, 5, 0], [2, 3, 4, 0]]
    assert [s.tolist() for s in data.sequences] == expected
    assert data.item_vectors.shape == (6, 4) and data.item_vectors.dtype == np.float32
    split = leave_one_out(data.sequences)
    assert [s.tolist() for s in split.train] == [[0, 1], [1, 2, 3], [4], [2, 3]]
    assert split.test.targets.tolist() == [3, 5, 0, 0]
    stored = prepare.read_train_sequences(out)
    assert [s.tolist() for s in stored] == [s.tolist() for s in split.train]
    source = prepare.train_source(out)
    assert [source[u].tolist() for u in range(len(source))] == [s.tolist() for s in split.train]
    # run.load_data -> load_dataset(cfg.data.source) reads the prepared folder as is
    again = load_dataset(out)
    assert [s.tolist() for s in again.sequences] == expected
    np.testing.assert_array_equal(again.item_vectors, data.item_vectors)


def test_rerun_is_byte_identical(tmp_path):
    src = _p5(tmp_path / "src", P5_LINES)
    a = tmp_path / "a"
    prepare_dataset(src, a, vectors="collab", vector_dim=4)
    b = tmp_path / "sub" / "b"
    prepare_dataset(src, b, vectors="collab", vector_dim=4)
    for name in [*prepare.FILES, "dataset.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_dataset(src, a, vectors="collab")
    prepare_dataset(src, a, vectors="collab", vector_dim=3, overwrite=True)
    assert load_prepared(a).item_vectors.shape == (6, 3)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_changed_file_is_detected(tmp_path):
    out = tmp_path / "prep"
    prepare_dataset(_p5(tmp_path / "src", P5_LINES), out, vectors="collab", vector_dim=4)
    (out / "heldout.npy").write_bytes((out / "heldout.npy").read_bytes()[:-4] + b"\7\0\0\0")
    with pytest.raises(ValueError, match="heldout.npy: sha256 differs"):
        load_prepared(out)


@pytest.mark.parametrize(
    "name, counts",
    [("movielens-100k", (943, 1682, 100_000)), ("amazon-scientific-2018", (8317, 4344, 58_492)),
     ("amazon-sports-2014", (35_598, 18_357, 296_337))],
)
def test_real_datasets_prepare_with_exact_counts(tmp_path, name, counts):
    out = tmp_path / name
    meta = prepare_dataset(shared_dataset(name), out, vectors="collab", vector_dim=8)
    users, items, interactions = counts
    assert meta["counts"]["users"] == users and meta["counts"]["items"] == items
    assert meta["counts"]["interactions"] == interactions
    assert meta["counts"]["train_interactions"] == interactions - 2 * users
    assert meta["dropped"] == {"duplicate_events": 0, "short_users": 0}
    data = load_prepared(out)
    assert data.counts() == dict(zip(("users", "items", "interactions"), counts, strict=True))
    if name == "amazon-scientific-2018":
        assert data.item_text[0] == read_lcrec(shared_dataset(name)).item_text[0]


def test_text_vectors_use_the_template(tmp_path):
    items = {"0": {"title": "Lens", "brand": "Acme", "categories": "Optics", "description": "d0"},
             "1": {"title": "Scope", "brand": "", "categories": "Optics,Tools"},
             "2": {"title": "Slide"}}
    src = _write(tmp_path / "src", {"x.inter.json": json.dumps({"0": [0, 1, 2], "1": [2, 1, 0]}),
                                    "x.item.json": json.dumps(items)})
    seen = []

    def encoder(texts):
        seen.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], np.float32)

    meta = prepare_dataset(src, tmp_path / "p", text_template="title; Brand:brand",
                           encoder=encoder)
    assert seen == [["Lens. Brand: Acme.", "Scope.", "Slide."]]
    assert meta["vectors"]["kind"] == "text" and meta["text_template"] == "title; Brand:brand"
    data = load_prepared(tmp_path / "p")
    assert data.item_text == seen[0]
    np.testing.assert_array_equal(data.item_vectors[:, 0], [18, 6, 6])


def test_generic_csv_through_the_cli(tmp_path, capsys):
    src = _write(tmp_path / "src", {
        "log.csv": "uid,iid,ts\n" + "".join(f"u{u},i{(u + k) % 5},{k}\n" for u in range(4)
                                             for k in range(4)),
        "items.csv": "iid,name\ni0,zero\ni1,one\n",
    })
    parser = argparse.ArgumentParser()
    prepare_cli.add_prepare_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", "--path", str(src / "log.csv"), "--out",
                              str(tmp_path / "p"), "--user-col", "uid", "--item-col", "iid",
                              "--time-col", "ts", "--items", str(src / "items.csv"),
                              "--text-cols", "name", "--vectors", "collab", "--vector-dim", "4"])
    assert prepare_cli.run_prepare(args) == 0
    assert "4 users, 5 items, 16 interactions" in capsys.readouterr().out
    data = load_prepared(tmp_path / "p")
    assert data.sequences[1].tolist() == [1, 2, 3, 4]
    assert data.item_text[:2] == ["zero.", "one."] and data.item_text[2] == ""


# ---- bad input: each gives a clear message and leaves nothing behind ----


def _fails(tmp_path, src, match, **kw):
    out = tmp_path / "out"
    kw.setdefault("vectors", "collab")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        prepare_dataset(src, out, **kw)
    assert err.match(match), str(err.value)
    _nothing_left(tmp_path, out)


def test_bad_malformed_line_names_file_and_line(tmp_path):
    src = _p5(tmp_path / "src", ["1 1 2 3", "2 1 x 3"])
    _fails(tmp_path, src, r"sequential_data.txt:2: expected an integer id, got 'x'")


def test_bad_unknown_item_id(tmp_path):
    src = _p5(tmp_path / "src", ["1 1 2 3", "2 1 2 9"], items=6)
    _fails(tmp_path, src, r"sequential_data.txt:2: user or item id missing from .*datamaps.json")


def test_bad_short_users_error_in_strict_mode(tmp_path):
    src = _p5(tmp_path / "src", P5_LINES[:4])
    _fails(tmp_path, src, r"1 user\(s\) have fewer than 3 interactions \(first: 'U4'\)", strict=True)


def test_bad_duplicate_events_error_in_strict_mode(tmp_path):
    src = _p5(tmp_path / "src", ["1 1 2 3", "2 4 4 5"])
    _fails(tmp_path, src, r"user 'U2': duplicate event \(item 'A004' twice", strict=True)


def test_bad_wrong_encoding(tmp_path):
    src = _write(tmp_path / "src", {"x.inter.json": b'{"0": [0, 1, 2]}\n',
                                    "x.item.json": b'{"0": {"title": "caf\xe9"}}'})
    _fails(tmp_path, src, r"x.item.json:1: expected UTF-8 JSON, got byte 0xe9")


def test_bad_missing_text_fields(tmp_path):
    items = {"0": {"title": "Lens"}, "1": {"title": ""}, "2": {"title": "Slide"}}
    src = _write(tmp_path / "src", {"x.inter.json": json.dumps({"0": [0, 1, 2]}),
                                    "x.item.json": json.dumps(items)})
    _fails(tmp_path, src, r"unknown field\(s\) \['color'\]; this dataset has \['brand'",
           text_template="title; color")
    _fails(tmp_path, src, r"1 item\(s\) have no text \(first: '1'\)", vectors="text", strict=True)
    data = load_dataset(src)
    assert render_texts(data, "title; description") == ["Lens.", "", "Slide."]


def test_bad_nan_in_vectors(tmp_path):
    src = _p5(tmp_path / "src", P5_LINES)
    vec = np.ones((6, 3), np.float32)
    vec[4, 1] = np.nan
    np.save(tmp_path / "v.npy", vec)
    _fails(tmp_path, src, r"item id 'A005' \(row 4 of the file\) contains NaN", vectors=str(
        tmp_path / "v.npy"))


def test_bad_empty_dataset(tmp_path):
    src = _write(tmp_path / "src", {"sequential_data.txt": "\n"})
    _fails(tmp_path, src, r"empty dataset: no user has 3 or more interactions \(0 users read\)")
    src2 = _p5(tmp_path / "src2", ["1 1 2", "2 3"])
    _fails(tmp_path, src2, r"empty dataset")


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    src = _p5(tmp_path / "src", P5_LINES)

    def broken(texts):
        raise RuntimeError("encoder crashed")

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no item has text"):
        prepare_dataset(src, out, vectors="text", encoder=broken)
    orig = prepare._write_array_record

    def explode(path, seqs):
        orig(path, seqs)
        raise OSError("disk full")

    monkeypatch.setattr(prepare, "_write_array_record", explode)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(src, out, vectors="collab")
    _nothing_left(tmp_path, out)


def test_cli_refuses_to_replace_an_existing_folder(tmp_path, capsys):
    src = _p5(tmp_path / "src", P5_LINES)
    (tmp_path / "p").mkdir()
    parser = argparse.ArgumentParser()
    prepare_cli.add_prepare_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", "--source", "p5", "--path", str(src), "--out",
                              str(tmp_path / "p"), "--vectors", "collab"])
    assert prepare_cli.run_prepare(args) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert list((tmp_path / "p").iterdir()) == []


def test_collab_vectors_ignore_held_out_items(tmp_path):
    lines = ["1 1 2 3 4 5", "2 2 3 4 1 6", "3 5 4 3 2 1", "4 1 3 5 2 4"]
    changed = [" ".join(line.split()[:-2] + ["6", "5"]) for line in lines]
    a, b = tmp_path / "a", tmp_path / "b"
    prepare_dataset(_p5(tmp_path / "s1", lines), a, vectors="collab", vector_dim=3)
    prepare_dataset(_p5(tmp_path / "s2", changed), b, vectors="collab", vector_dim=3)
    assert (a / "item_vectors.npy").read_bytes() == (b / "item_vectors.npy").read_bytes()
    assert (a / "heldout.npy").read_bytes() != (b / "heldout.npy").read_bytes()


# ---- --overwrite replaces only a prepared folder, never the dataset or anything else ----


def _tree(root):
    """Every path under ``root`` (hidden ones too): bytes for files, the target for links."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = f"-> {p.readlink()}" if p.is_symlink() else (
            p.read_bytes() if p.is_file() else "dir")
    return out


def _cli(path, out, *extra):
    parser = argparse.ArgumentParser()
    prepare_cli.add_prepare_parser(parser.add_subparsers())
    return prepare_cli.run_prepare(parser.parse_args(
        ["prepare", "--path", str(path), "--out", str(out), "--vectors", "collab",
         "--vector-dim", "4", *extra]))


def _layout(tmp_path, case):
    """(path, out) of each refused ``--overwrite``; raw data and unrelated files around them."""
    src = _p5(tmp_path / "mydata", P5_LINES)
    (src / "notes.txt").write_text("my notes, not part of any dataset\n")
    if case == "out is the path":
        return src, src
    if case == "out is the path file":
        return src / "sequential_data.txt", src / "sequential_data.txt"
    if case == "out contains the path":  # a prepared folder that holds the raw data
        prepare_dataset(_p5(tmp_path / "other", P5_LINES), tmp_path / "prep", vectors="collab")
        raw = tmp_path / "prep" / "raw"
        src.rename(raw)
        return raw, tmp_path / "prep"
    if case == "out is inside the path":  # a prepared folder inside the raw data folder
        prepare_dataset(_p5(tmp_path / "other", P5_LINES), src / "prep", vectors="collab")
        return src, src / "prep"
    if case == "out is a file":
        (tmp_path / "some.csv").write_text("user,item\nu1,i1\n")
        return src, tmp_path / "some.csv"
    if case == "out is an unrelated folder":
        _write(tmp_path / "results", {"report.md": "# my results\n"})
        return src, tmp_path / "results"
    if case == "out has another dataset.json":
        _write(tmp_path / "other_tool", {"dataset.json": json.dumps({"format": "hf-datasets"}),
                                         "data.bin": b"\0\1\2"})
        return src, tmp_path / "other_tool"
    if case == "out is a link to a prepared folder":
        prepare_dataset(_p5(tmp_path / "other", P5_LINES), tmp_path / "prep", vectors="collab")
        (tmp_path / "link").symlink_to(tmp_path / "prep")
        return src, tmp_path / "link"
    raise AssertionError(case)


@pytest.mark.parametrize("case, says", [
    ("out is the path", "is the dataset being read"),
    ("out is the path file", "is the dataset being read"),
    ("out contains the path", "contains the dataset being read"),
    ("out is inside the path", "is inside the dataset being read"),
    ("out is a file", "is a file, not a folder from sidjax prepare"),
    ("out is an unrelated folder", "is not a folder from sidjax prepare"),
    ("out has another dataset.json", "is not a folder from sidjax prepare"),
    ("out is a link to a prepared folder", "is a symbolic link"),
])
def test_overwrite_refuses_anything_but_a_prepared_folder(tmp_path, capsys, case, says):
    path, out = _layout(tmp_path, case)
    before = _tree(tmp_path)
    assert _cli(path, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sidjax prepare: error: "), err
    assert f"{out} {says}" in err and "choose another --out" in err, err
    assert _tree(tmp_path) == before  # byte-identical, and no hidden or temporary leftovers
    with pytest.raises(prepare.OutputConflict, match="choose another --out"):
        prepare_dataset(path, out, vectors="collab", overwrite=True)
    assert _tree(tmp_path) == before


def test_overwrite_replaces_a_prepared_folder_next_to_its_data(tmp_path, capsys):
    src = _p5(tmp_path / "mydata", P5_LINES)
    out = tmp_path / "prep"
    assert _cli(src, out) == 0
    assert _cli(src, out, "--overwrite", "--vector-dim", "3") == 0
    assert load_prepared(out).item_vectors.shape == (6, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "prep"]
    assert sorted(p.name for p in src.iterdir()) == ["datamaps.json", "sequential_data.txt"]


def test_out_inside_the_dataset_is_refused_without_overwrite_too(tmp_path, capsys):
    src = _p5(tmp_path / "mydata", P5_LINES)
    before = _tree(tmp_path)
    assert _cli(src, src / "prep") == 2
    assert "is inside the dataset being read" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def test_cli_table_encoding_is_strict_and_chosen_by_the_user(tmp_path, capsys):
    rows = "".join(f"u{u},i{(u + k) % 5},{k}\n" for u in range(4) for k in range(4))
    src = _write(tmp_path / "src", {
        "log.csv": "uid,iid,ts\n" + rows,
        "items.csv": "iid,name\ni0,Café\ni1,Thé\n".encode("latin-1"),
    })  # fmt: skip
    args = ["--user-col", "uid", "--item-col", "iid", "--time-col", "ts",
            "--items", str(src / "items.csv"), "--text-cols", "name"]
    with pytest.raises(ValueError, match=r"items\.csv:2: expected utf-8 text, got byte 0xe9 at "
                                         r"byte offset 15 .*pass --encoding latin-1"):
        _cli(src / "log.csv", tmp_path / "p", *args)
    _nothing_left(tmp_path, tmp_path / "p")
    assert _cli(src / "log.csv", tmp_path / "p", *args, "--encoding", "latin-1") == 0
    data = load_prepared(tmp_path / "p")
    assert data.item_text[:2] == ["Café.", "Thé."]
    assert data.provenance["encoding"] == {"log.csv": "latin-1", "items.csv": "latin-1"}


def test_cli_refuses_encoding_for_other_sources_and_colliding_columns(tmp_path):
    src = _p5(tmp_path / "src", P5_LINES)
    with pytest.raises(ValueError, match=r"--encoding applies to table sources only, not 'p5'"):
        _cli(src, tmp_path / "p", "--encoding", "latin-1")
    log = _write(tmp_path / "t", {"log.csv": "uid,ts\nu1,1\n"}) / "log.csv"
    with pytest.raises(ValueError, match=r"log\.csv: user_col \(--user-col\) and item_col "
                                         r"\(--item-col\) both name column 'uid'"):
        _cli(log, tmp_path / "p", "--user-col", "uid", "--item-col", "uid", "--time-col", "ts")
    _nothing_left(tmp_path, tmp_path / "p")
