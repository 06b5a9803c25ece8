"""Dataset readers: exact counts on the shared real data, and small written files for the rest."""

import functools
import json
import re
import sys

import numpy as np
import pytest
from conftest import shared_dataset, write_files

from sidjax.data.sources import (
    detect_format,
    join_text,
    kcore,
    load_dataset,
    read_lcrec,
    read_movielens,
    read_p5,
    read_table,
)
from sidjax.data.types import InteractionData


@functools.cache
def _real(name: str) -> InteractionData:
    return load_dataset(shared_dataset(name))


_write = write_files


def _seqs(data: InteractionData) -> dict[str, list[str]]:
    return {
        u: [data.item_ids[i] for i in s] for u, s in zip(data.user_ids, data.sequences, strict=True)
    }


@pytest.mark.parametrize(
    "name, fmt, counts, file, sha256",
    [
        ("movielens-100k", "movielens-100k", (943, 1682, 100_000), "u.data",
         "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
        ("amazon-scientific-2018", "lcrec", (8317, 4344, 58_492), "Scientific.inter.json",
         "32c6c01876ebecebdfabd2dbd358594be36655e9e7b168772a7a3aa3624ee1b4"),
        ("amazon-toys-2014", "lcrec", (19_412, 11_924, 167_597), "Toys.inter.json",
         "f432a429753e34f4361a64d9130a88dcfb8d4dd241ae98bffdeca65f31fe7b38"),
        ("amazon-sports-2014", "p5", (35_598, 18_357, 296_337), "sequential_data.txt",
         "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"),
    ],
)  # fmt: skip
def test_real_dataset_counts(name, fmt, counts, file, sha256):
    data = _real(name)
    expected = dict(zip(("users", "items", "interactions"), counts, strict=True))
    assert data.counts() == expected
    assert data.name == name
    assert data.provenance["format"] == fmt
    assert data.provenance["counts"] == expected
    assert data.provenance["files"][file]["sha256"] == sha256
    assert all(s.dtype == np.int32 and s.min() >= 0 for s in data.sequences)
    assert max(int(s.max()) for s in data.sequences) < data.num_items


def test_movielens_100k_chronological_with_stable_ties():
    data = _real("movielens-100k")
    rows = [
        line.split("\t")
        for line in (shared_dataset("movielens-100k") / "u.data").read_text().splitlines()
    ]
    expected: dict[str, list[str]] = {}
    for user, item, _, _ in sorted(rows, key=lambda r: int(r[3])):
        expected.setdefault(user, []).append(item)
    assert _seqs(data) == expected
    assert expected["1"][:5] == ["168", "172", "165", "156", "196"]
    assert data.item_ids == [str(i) for i in range(1, 1683)]
    assert data.user_ids == [str(u) for u in range(1, 944)]


@pytest.mark.parametrize(
    "item_id, title, genres",
    [
        ("1", "Toy Story (1995)", "Animation|Children's|Comedy"),
        ("543", "Misérables, Les (1995)", "Drama|Musical"),
        ("1633", "Á köldum klaka (Cold Fever) (1994)", "Comedy|Drama"),
        ("267", "unknown", "unknown"),
    ],
)
def test_movielens_100k_latin1_titles_and_genres(item_id, title, genres):
    data = _real("movielens-100k")
    i = data.item_ids.index(item_id)
    assert data.item_fields["title"][i] == title
    assert data.item_fields["genres"][i] == genres
    assert data.item_text[i] == f"{title}. Genres: {genres.replace('|', ', ')}."
    assert data.provenance["encoding"]["u.item"] == "latin-1"


def test_p5_sports_known_users():
    data = _real("amazon-sports-2014")
    assert data.user_ids[:2] == ["AIXZKN4ACSKI", "A1L5P841VIO02V"]
    assert data.item_ids[:3] == ["1881509818", "B0048KGFHU", "B0081JJVUC"]
    np.testing.assert_array_equal(data.sequences[0], np.arange(8))
    np.testing.assert_array_equal(data.sequences[1][:10], [8, 9, 10, 11, 12, 13, 14, 15, 0, 16])
    # item_keywords.txt joined by ASIN (SOURCE.md: P5 item 1 = 1881509818)
    assert data.item_ids[0] == "1881509818"
    assert data.item_text[0] == "ghost armorers tool 332 punch hunting fishing"
    assert data.item_fields["keywords"] == data.item_text


def test_lcrec_scientific_sequences_and_text():
    data = _real("amazon-scientific-2018")
    np.testing.assert_array_equal(data.sequences[0], np.arange(9))
    np.testing.assert_array_equal(data.sequences[1], [9, 10, 11, 12, 6])
    assert data.item_fields["title"][0].startswith("SUPCO SPP6 Relay/Capacitor")
    assert data.item_text[1].startswith("Stanley TRA708T")
    assert "Brand: Stanley. Categories: Industrial & Scientific, Fasteners," in data.item_text[1]
    assert not any(re.search(r"&\w+;|</?\w+>", t) for t in data.item_text)
    assert "&amp;" in data.item_fields["categories"][1161]
    again = kcore(data)
    assert again.counts() == data.counts()
    assert again.provenance["filters"][-1]["rounds"] == 0


def test_lcrec_toys_titles_and_categories():
    data = _real("amazon-toys-2014")
    titles = data.item_fields["title"]
    assert sum(bool(t) for t in titles) == 11_924 - 59  # 59 items have no title (SOURCE.md)
    assert all(data.item_text)  # every item has at least its category path
    assert "Categories: Toys & Games" in data.item_text[0]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_movielens_dat_format(tmp_path, encoding):
    _write(tmp_path, {
        "ratings.dat": "2::10::5::300\n1::2::4::200\n1::10::3::100\n1::3::3::200\n2::2::1::50\n",
        "movies.dat": "2::Café Society (1995)::Comedy|Drama\n3::Old::(no genres listed)\n"
                      "10::Ten (2000)::Action\n99::Unrated::Drama\n".encode(encoding),
    })  # fmt: skip
    data = load_dataset(tmp_path)
    assert data.provenance["format"] == "movielens-dat"
    assert data.provenance["encoding"] == {"movies.dat": encoding}
    assert data.item_ids == ["2", "3", "10"]
    assert data.provenance["catalog_items"] == 4
    assert _seqs(data) == {"1": ["10", "2", "3"], "2": ["2", "10"]}
    assert data.item_text == [
        "Café Society (1995). Genres: Comedy, Drama.",
        "Old.",
        "Ten (2000). Genres: Action.",
    ]


@pytest.mark.parametrize(
    "filename, sep, times",
    [
        ("inter.csv", ",", ["2020-01-02", "2020-01-01T10:00", "2020-01-02", "2020-01-01"]),
        ("inter.tsv", "\t", ["2", "1", "2", "0.5"]),
        ("inter.txt", ";", ["2", "1", "2", "0.5"]),
    ],
)
def test_read_table_sorts_by_time_with_stable_ties(tmp_path, filename, sep, times):
    rows = [("u1", "b"), ("u2", "a"), ("u1", "a"), ("u1", "c")]
    lines = [sep.join(["user", "item", "time"])]
    lines += [sep.join([u, i, t]) for (u, i), t in zip(rows, times, strict=True)]
    _write(tmp_path, {
        filename: "\n".join(lines) + "\n",
        "items.csv": 'id,title,brand\na,"Apple, red",<b>Acme</b>\nc,Cherry,\nz,Unused,Z\n',
    })  # fmt: skip
    data = read_table(tmp_path / filename, user_col="user", item_col="item", time_col="time",
                      items_path=tmp_path / "items.csv", item_id_col="id",
                      text_cols=("title", "brand"))  # fmt: skip
    assert data.name == "inter"
    assert data.user_ids == ["u1", "u2"]
    assert data.item_ids == ["b", "a", "c"]
    assert _seqs(data) == {"u1": ["c", "b", "a"], "u2": ["a"]}
    assert data.item_fields == {
        "title": ["", "Apple, red", "Cherry"],
        "brand": ["", "<b>Acme</b>", ""],
    }
    assert data.item_text == ["", "Apple, red. Acme.", "Cherry."]
    assert data.provenance["items_without_metadata"] == 1


def test_read_table_parquet_needs_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "inter.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        read_table(tmp_path / "inter.parquet", user_col="u", item_col="i", time_col="t")


def _toy(sequences: list[list[int]], num_items: int) -> InteractionData:
    return InteractionData(
        "toy",
        [np.asarray(s, dtype=np.int32) for s in sequences],
        [f"u{k}" for k in range(len(sequences))],
        [f"i{k}" for k in range(num_items)],
        item_text=[f"text {k}" for k in range(num_items)],
        item_vectors=np.arange(num_items, dtype=np.float32)[:, None],
    )


def test_kcore_cascades_over_several_rounds():
    a, b, c, d = range(4)
    data = _toy([[a, b], [b, c], [c, d], [d, c]], 4)
    out = kcore(data, user_min=2, item_min=2)
    assert out.user_ids == ["u2", "u3"]
    assert out.item_ids == ["i2", "i3"]
    assert out.item_text == ["text 2", "text 3"]
    np.testing.assert_array_equal(out.item_vectors[:, 0], [2, 3])
    assert [s.tolist() for s in out.sequences] == [[0, 1], [1, 0]]
    (record,) = out.provenance["filters"]
    assert record["rounds"] == 4
    assert record["before"] == {"users": 4, "items": 4, "interactions": 8}
    assert (
        record["after"] == out.provenance["counts"] == {"users": 2, "items": 2, "interactions": 4}
    )


@pytest.mark.parametrize("user_min, item_min", [(2, 2), (3, 5), (5, 3)])
def test_kcore_reaches_fixed_point(user_min, item_min):
    rng = np.random.default_rng(user_min * 10 + item_min)
    data = _toy([rng.integers(0, 60, rng.integers(1, 12)).tolist() for _ in range(150)], 60)
    out = kcore(data, user_min, item_min)
    assert out.num_users > 0
    assert min(len(s) for s in out.sequences) >= user_min
    assert np.bincount(np.concatenate(out.sequences)).min() >= item_min
    assert out.provenance["filters"][0]["rounds"] >= 1
    again = kcore(out, user_min, item_min)
    assert again.provenance["filters"][-1]["rounds"] == 0
    assert len(again.provenance["filters"]) == 2
    assert [s.tolist() for s in again.sequences] == [s.tolist() for s in out.sequences]


U_ITEM = "1|Toy (1995)|01-Jan-1995||url|" + "|".join("0" * 19) + "\n"
ERROR_CASES = [
    ({"u.data": "1\t1\t5\t10\n1\t2\t5\n"}, r"u\.data:2: expected 4 TAB-separated fields, got 3"),
    ({"u.data": "1\t1\t5\tx\n"}, r"u\.data:1: expected an integer timestamp, got 'x'"),
    ({"u.data": "1\t1\t5\t10\n", "u.item": U_ITEM + "2|Short|x\n"},
     r"u\.item:2: expected 24 '\|'-separated fields, got 3"),
    ({"ratings.dat": "1::1::5::10\n\n1::2::5\n"}, r"ratings\.dat:3: expected 4 '::'-separated"),
    ({"ratings.dat": "1::1::5::10\n", "movies.dat": "1::Title\n"}, r"movies\.dat:1: expected 3"),
    ({"sequential_data.txt": "1 1 2\n2 3\n3\n"}, r"sequential_data\.txt:3: expected '<user>"),
    ({"sequential_data.txt": "1 1 2\n1 3\n"}, r"sequential_data\.txt:2: expected each user once"),
    ({"x.inter.json": '{"0": [0, 1],\n "1": [2,]}'}, r"x\.inter\.json:2: expected valid JSON"),
    ({"x.inter.json": '{"0": [0, "a"]}'}, r"x\.inter\.json: user '0': expected a list of integer"),
    ({"inter.csv": "user,item,time\nu,a,1\nu,b\n"}, r"inter\.csv:3: expected 3 ','-separated"),
    ({"inter.csv": "user,item,time\nu,a,yesterday\n"}, r"inter\.csv:2: expected a number or ISO"),
    ({"inter.csv": "user,item,ts\nu,a,1\n"}, r"inter\.csv:1: missing column\(s\) \['time'\]"),
]  # fmt: skip


@pytest.mark.parametrize("files, match", ERROR_CASES)
def test_malformed_input_names_file_and_line(tmp_path, files, match):
    _write(tmp_path, files)
    kw = (
        {"user_col": "user", "item_col": "item", "time_col": "time"} if "inter.csv" in files else {}
    )
    path = tmp_path / "inter.csv" if kw else tmp_path
    with pytest.raises(ValueError, match=match):
        load_dataset(path, **kw)


def test_missing_files_name_the_path(tmp_path):
    _write(tmp_path, {"u.data": "1\t1\t5\t10\n"})
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "u.item"))):
        read_movielens(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        load_dataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty)) + r".*u\.data.*\*\.inter\.json"):
        load_dataset(empty)


def test_p5_without_datamaps_and_lcrec_by_file(tmp_path):
    _write(tmp_path, {
        "Sports.txt": "1 2 3 2\n2 1 3\n",
        "Toy.inter.json": '{"1": [1], "0": [0, 1]}',
        "Toy.item.json": json.dumps({"0": {"title": "A &amp; B"},
                                     "1": {"title": "C", "brand": "D"}}),
    })  # fmt: skip
    p5 = read_p5(tmp_path / "Sports.txt")
    assert (p5.user_ids, p5.item_ids) == (["1", "2"], ["1", "2", "3"])
    assert [s.tolist() for s in p5.sequences] == [[1, 2, 1], [0, 2]]
    assert detect_format(tmp_path / "Toy.inter.json") == "lcrec"
    lc = load_dataset(tmp_path / "Toy.inter.json")
    assert lc.user_ids == ["0", "1"]
    assert lc.item_text == ["A & B.", "C. Brand: D."]
    assert read_lcrec(tmp_path).provenance["prefix"] == "Toy"


@pytest.mark.parametrize("keywords, message", [
    ("B2 red ball\nB1 blue kite\n", None),
    ("B2 red ball\n", "no keywords for 1 item"),
    ("B2 red ball\nB2 blue kite\n", ":2: ASIN B2 appears twice"),
    ("B2 red ball\nB1\n", ":2: expected '<ASIN> <keywords>'"),
])
def test_p5_keywords_join_by_asin(tmp_path, keywords, message):
    _write(tmp_path, {
        "sequential_data.txt": "1 1 2 1\n2 2 1\n",
        "datamaps.json": json.dumps({"id2user": {"1": "u1", "2": "u2"},
                                     "id2item": {"1": "B1", "2": "B2"}}),
        "item_keywords.txt": keywords,
    })  # fmt: skip
    if message is None:
        data = read_p5(tmp_path)
        assert data.item_text == ["blue kite", "red ball"]
        assert "item_keywords.txt" in data.provenance["files"]
    else:
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            read_p5(tmp_path)
        assert "item_keywords.txt" in str(err.value)


def test_item_vectors_choice():
    from sidjax.data.split import leave_one_out
    from sidjax.run import item_vectors

    data = InteractionData("toy", [np.array([0, 1, 2, 1]), np.array([2, 0, 1])], ["a", "b"],
                           ["x", "y", "z"])
    split = leave_one_out(data.sequences)
    collab = item_vectors(data, split, log=lambda _: None, kind="auto")
    assert collab.shape[0] == 3
    with pytest.raises(ValueError, match="has no item text; use 'collab'"):
        item_vectors(data, split, log=lambda _: None, kind="text")
    with pytest.raises(ValueError, match="data.item_vectors='tfidf'"):
        item_vectors(data, split, log=lambda _: None, kind="tfidf")


def test_join_text_skips_empty_and_cleans():
    parts = [
        ("", "Title."),
        ("Brand", "  "),
        ("Categories", "a &gt; b"),
        ("", "<p>Body\n text</p>"),
    ]
    assert join_text(parts) == "Title. Categories: a > b. Body text."
    assert join_text([("", "")]) == ""


# ---- generic tables never guess: encoding, duplicate headers, column roles, quotes ----

_COLS = {"user_col": "user", "item_col": "item", "time_col": "time"}


@pytest.mark.parametrize("eol, offset", [(b"\n", 32), (b"\r\n", 34)])
def test_read_table_is_strict_utf8_and_names_the_bad_byte(tmp_path, eol, offset):
    lines = [b"user,item,time", "u1,café,1".encode(), b"u2,caf\xe9,2", b"u3,tea,3", b""]
    _write(tmp_path, {"inter.csv": eol.join(lines)})
    with pytest.raises(ValueError) as err:
        load_dataset(tmp_path / "inter.csv", **_COLS)
    message = str(err.value)
    assert "\n" not in message
    assert re.match(r".*inter\.csv:3: expected utf-8 text, got byte 0xe9 at byte offset "
                    rf"{offset} \(.*\); pass --encoding latin-1 .*if the file is Latin-1$", message)
    data = load_dataset(tmp_path / "inter.csv", **_COLS, encoding="latin-1")  # the user's choice
    assert data.item_ids == ["cafÃ©", "café", "tea"]
    assert data.provenance["encoding"] == {"inter.csv": "latin-1"}


def test_read_table_utf8_text_and_items_file_encoding(tmp_path):
    _write(tmp_path, {
        "inter.csv": "user,item,time\nu1,a,1\nu1,b,2\n",
        "items.csv": "item,title\na,Café\nb,Crème brûlée\n",
        "items_latin1.csv": "item,title\na,Café\nb,Thé\n".encode("latin-1"),
    })  # fmt: skip
    data = read_table(tmp_path / "inter.csv", **_COLS, items_path=tmp_path / "items.csv",
                      text_cols=("title",))  # fmt: skip
    assert data.item_fields == {"title": ["Café", "Crème brûlée"]}
    assert data.provenance["encoding"] == {"inter.csv": "utf-8", "items.csv": "utf-8"}
    with pytest.raises(ValueError, match=r"items_latin1\.csv:2: expected utf-8 text, got byte 0xe9"):
        read_table(tmp_path / "inter.csv", **_COLS, items_path=tmp_path / "items_latin1.csv",
                   text_cols=("title",))  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown encoding 'utf-9'"):
        read_table(tmp_path / "inter.csv", **_COLS, encoding="utf-9")


def test_read_table_truncated_utf8_at_end_of_file(tmp_path):
    _write(tmp_path, {"inter.csv": b"user,item,time\nu1,a,1\nu2,\xe2\x82"})
    with pytest.raises(ValueError, match=r"inter\.csv:3: expected utf-8 text, got byte 0xe2 at "
                                         r"byte offset 25"):
        read_table(tmp_path / "inter.csv", **_COLS)


def test_read_table_movielens_reader_keeps_its_latin1_fallback(tmp_path):
    _write(tmp_path, {"u.data": "1\t1\t5\t10\n", "u.item": ("1|Café (1995)|01-Jan-1995||url|"
                      + "|".join("0" * 19) + "\n").encode("latin-1")})  # fmt: skip
    data = read_movielens(tmp_path)
    assert data.item_fields["title"] == ["Café (1995)"]
    assert data.provenance["encoding"]["u.item"] == "latin-1"


@pytest.mark.parametrize(
    "header, match",
    [
        ("user,item,item,time", r"inter\.csv:1: expected unique column names, got 'item' in "
                                r"columns 2, 3 \(of 4\)"),
        ("time,user,item,x,user", r"inter\.csv:1: expected unique column names, got 'user' in "
                                  r"columns 2, 5 \(of 5\)"),
    ],
)  # fmt: skip
def test_read_table_refuses_duplicate_header_names(tmp_path, header, match):
    _write(tmp_path, {"inter.csv": f"{header}\n1,2,3,4" + (",5" if header.count(",") == 4 else "")
                      + "\n"})  # fmt: skip
    with pytest.raises(ValueError, match=match):
        read_table(tmp_path / "inter.csv", **_COLS)


def test_read_table_allows_duplicate_names_it_does_not_read(tmp_path):
    _write(tmp_path, {"inter.csv": "user,item,time,,\nu1,a,1,,\nu1,b,2,,\n"})
    assert _seqs(read_table(tmp_path / "inter.csv", **_COLS)) == {"u1": ["a", "b"]}


def test_read_table_refuses_duplicate_parquet_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.Table.from_arrays([pa.array(["u"]), pa.array(["a"]), pa.array(["b"]),
                                  pa.array([1])], names=["user", "item", "item", "time"])
    pq.write_table(table, tmp_path / "inter.parquet")
    with pytest.raises(ValueError, match=r"inter\.parquet: expected unique column names, got "
                                         r"'item' in columns 2, 3"):
        read_table(tmp_path / "inter.parquet", **_COLS)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"user_col": "uid", "item_col": "uid", "time_col": "ts"},
         r"inter\.csv: user_col \(--user-col\) and item_col \(--item-col\) both name column 'uid'"),
        ({"user_col": "uid", "item_col": "iid", "time_col": "iid"},
         r"inter\.csv: item_col \(--item-col\) and time_col \(--time-col\) both name column 'iid'"),
        ({"user_col": "ts", "item_col": "iid", "time_col": "ts"},
         r"user_col \(--user-col\) and time_col \(--time-col\) both name column 'ts'"),
        ({"user_col": "uid", "item_col": "iid", "time_col": "ts", "text_cols": ("iid",)},
         r"items\.csv: item_col \(--item-col\) and text_cols\[0\] \(--text-cols\) both name "
         r"column 'iid'"),
        ({"user_col": "uid", "item_col": "iid", "time_col": "ts", "item_id_col": "name",
          "text_cols": ("name",)},
         r"item_id_col \(--item-id-col\) and text_cols\[0\] \(--text-cols\) both name column"),
        ({"user_col": "uid", "item_col": "iid", "time_col": "ts", "text_cols": ("name", "name")},
         r"text_cols\[0\] \(--text-cols\) and text_cols\[1\] \(--text-cols\) both name column"),
    ],
)  # fmt: skip
def test_read_table_refuses_one_column_for_two_roles(tmp_path, kw, match):
    _write(tmp_path, {"inter.csv": "uid,iid,ts\nu1,a,1\nu1,b,2\n", "items.csv": "iid,name\na,A\n"})
    if "text_cols" in kw:
        kw = {**kw, "items_path": tmp_path / "items.csv"}
    with pytest.raises(ValueError, match=match) as err:
        read_table(tmp_path / "inter.csv", **kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "body, match",
    [   # never closed: the rest of the file would be one field
        ('u1,a,1\nu1,"b,2\nu1,c,3\nu1,d,4\n',
         r"inter\.csv:3: expected a ','-separated row, got a quoted field that is never closed "
         r"\(the file ends at line 5\); check this row for an unbalanced '\"'"),
        # closed by a later quote: a well-formed-looking row that swallows a line
        ('u1,a,1\nu1,"b,2\nu1,"c",3\nu1,d,4\n',
         r"inter\.csv:3: expected a ','-separated row, got .* at line 4; check this row for an "
         r"unbalanced '\"'"),
        # a quoted line break, then too many fields: reported where the row starts
        ('u1,a,1\nu1,"b\nc",3,4\nu1,d,4\n',
         r"inter\.csv:3: expected 3 ','-separated fields, got 4 \(the row runs on to line 4; "
         r"check it for an unbalanced '\"'\)"),
    ],
)  # fmt: skip
def test_read_table_reports_an_unbalanced_quote_where_its_row_starts(tmp_path, body, match):
    _write(tmp_path, {"inter.csv": "user,item,time\n" + body})
    with pytest.raises(ValueError, match=match):
        read_table(tmp_path / "inter.csv", **_COLS)


def test_read_table_keeps_quoted_line_breaks_and_their_line_numbers(tmp_path):
    _write(tmp_path, {
        "inter.csv": "user,item,time\nu1,a,1\nu1,b,2\n",
        "items.csv": 'item,title\na,"two\nlines"\n\nb,x\nc,"say ""hi"""\nb,dup\n',
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"items\.csv:7: expected unique item ids, got 'b'"):
        read_table(tmp_path / "inter.csv", **_COLS, items_path=tmp_path / "items.csv",
                   text_cols=("title",))  # fmt: skip
    _write(tmp_path, {"items.csv": 'item,title\na,"two\nlines"\n\nb,x\nc,"say ""hi"""\n'})
    data = read_table(tmp_path / "inter.csv", **_COLS, items_path=tmp_path / "items.csv",
                      text_cols=("title",))  # fmt: skip
    assert data.item_fields == {"title": ["two\nlines", "x"]}
