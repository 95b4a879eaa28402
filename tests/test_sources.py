"""Raw readers (each dataset's exact raw format) and the download / verify / unpack path.

Downloads are served by a local http.server on 127.0.0.1 (conftest ``http_server``); no test
touches the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from esapr.data import download as download_module
from esapr.data.download import ensure_raw
from esapr.data.sources import (SOURCES, read_amazon, read_ml1m, read_ml20m, read_ml100k, read_user_file)
from esapr.errors import UserError
from tests.conftest import closed_port_url, zip_bytes


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# --- readers: each dataset's exact raw format -------------------------------------------------------

def test_ml1m_double_colon(tmp_path):
    raw = read_ml1m(write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n"
                                                   "2::1193::4::978298413\n"))
    assert raw.user.tolist() == [1, 1, 2]
    assert raw.item.tolist() == [1193, 661, 1193]
    assert raw.rating.tolist() == [5, 3, 4]
    assert raw.timestamp.tolist() == [978300760, 978302109, 978298413]
    assert raw.timestamp.dtype == np.int64


def test_ml20m_header_and_float_ratings(tmp_path):
    raw = read_ml20m(write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n"
                                                     "1,29,0.5,1112484676\n7,2,5.0,1112484819\n"))
    assert raw.user.tolist() == [1, 1, 7]
    assert raw.item.tolist() == [2, 29, 2]
    assert raw.rating.tolist() == [3.5, 0.5, 5.0]
    assert raw.timestamp.tolist() == [1112486027, 1112484676, 1112484819]
    assert len(raw) == 3   # the header is not a row


def test_ml20m_without_header_keeps_the_first_row(tmp_path):
    raw = read_ml20m(write(tmp_path / "ratings.csv", "1,2,3.5,1112486027\n1,29,0.5,1112484676\n"))
    assert raw.item.tolist() == [2, 29]


def test_amazon_string_ids_without_header(tmp_path):
    raw = read_amazon(write(tmp_path / "ratings.csv", "A2XYZ0QW,B00ASIN001,5.0,1365811200\n"
                                                      "A1BCD,0205616461,3.0,1369699200\n"
                                                      "A2XYZ0QW,0205616461,1.0,1355443200\n"))
    assert raw.user.tolist() == ["A2XYZ0QW", "A1BCD", "A2XYZ0QW"]
    # an all-digit ASIN keeps its leading zero: ids are strings, never parsed as numbers
    assert raw.item.tolist() == ["B00ASIN001", "0205616461", "0205616461"]
    assert raw.rating.tolist() == [5.0, 3.0, 1.0]
    assert raw.timestamp.tolist() == [1365811200, 1369699200, 1355443200]


def test_ids_that_look_like_missing_values_are_ids(tmp_path):
    raw = read_amazon(write(tmp_path / "ratings.csv", "NA,null,5.0,1\nnan,None,3.0,2\n"))
    assert raw.user.tolist() == ["NA", "nan"] and raw.item.tolist() == ["null", "None"]
    with pytest.raises(UserError, match="line 2 has no value in column 'item'"):
        read_amazon(write(tmp_path / "ratings.csv", "A1,B1,5.0,1\nA2,,3.0,2\n"))


def test_ml100k_tab_separated(tmp_path):
    raw = read_ml100k(write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"))
    assert raw.user.tolist() == [196, 186]
    assert raw.item.tolist() == [242, 302]
    assert raw.timestamp.tolist() == [881250949, 891717742]


@pytest.mark.parametrize("text, users, items, has_time", [
    ("user_id,movieId,rating,timestamp\n5,10,4,100\n6,11,3,200\n", [5, 6], [10, 11], True),
    ("uid\tsid\n5\t10\n6\t11\n", [5, 6], [10, 11], False),
    ("userId,itemId,time\nu5,i10,100\nu6,i11,200\n", ["u5", "u6"], ["i10", "i11"], True),
    ("User_ID;Item_ID;Score\n5;10;1.5\n6;11;2\n", [5, 6], [10, 11], False),
    ("timestamp,sid,uid\n100,10,5\n200,11,6\n", [5, 6], [10, 11], True),   # any column order
])
def test_user_file_header_spellings(tmp_path, text, users, items, has_time):
    raw = read_user_file(write(tmp_path / "mine.csv", text))
    assert raw.user.tolist() == users
    assert raw.item.tolist() == items
    # without a time column, file order is time order
    assert raw.timestamp.tolist() == ([100, 200] if has_time else [0, 1])


def test_user_file_dates_become_unix_seconds(tmp_path):
    raw = read_user_file(write(tmp_path / "mine.csv", "user,item,date\n1,2,1970-01-02\n1,3,1970-01-03T00:00:10Z\n"))
    assert raw.timestamp.tolist() == [86400, 2 * 86400 + 10]


def test_sequence_file(tmp_path):
    raw = read_user_file(write(tmp_path / "seqs.txt", "7 3 1 2\n\n9 4\nalice 3 3\n"))
    assert raw.user.tolist() == ["7", "7", "7", "9", "alice", "alice"]     # a non-numeric user: all strings
    assert raw.item.tolist() == [3, 1, 2, 4, 3, 3]
    assert raw.timestamp.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("reader, name, text, expected", [
    (read_ml20m, "ratings.csv", "userId,movieId,rating\n1,2,3.5\n", "missing column 'timestamp'"),
    (read_ml1m, "ratings.dat", "1::2::5::978300760\n1::3::x::978300761\n", "column 'rating' must be a number, line 2 has 'x'"),
    (read_ml100k, "u.data", "1\t2\t5\tyesterday\n", "column 'timestamp' must be an integer, line 1 has 'yesterday'"),
    (read_ml100k, "u.data", "1\t2\t5\tinf\n", "column 'timestamp' must be an integer, line 1 has 'inf'"),
    (read_ml100k, "u.data", "1\t99999999999999999999\t5\t1\n",
     "column 'item' must be an integer below 2**63, line 1 has '99999999999999999999'"),
    (read_ml100k, "u.data", "", "the file is empty"),
    (read_ml20m, "ratings.csv", "userId,movieId,rating,timestamp\n", "no rows"),
    (read_ml100k, "u.data", "1\t2\t5\t100\n1\t3\n", "line 2 has no value in column 'rating'"),
    (read_ml1m, "ratings.dat", "1,2,5,978300760\n", "line 1 is not user::item::rating::timestamp"),
    (read_ml1m, "ratings.dat", "1::2::5::978300760\n1:2:5:978300761\n", "line 2 is not user::item::rating::timestamp"),
    (read_ml1m, "ratings.dat", "1::2::5::978300760::7\n", "is not user::item::rating::timestamp"),
    (read_ml20m, "ratings.csv", "userId,movieId,rating,timestamp,tag\n1,2,3.5,100,x\n", "5 columns, expected 4"),
    (read_ml20m, "ratings.csv", "userId,movieId,rating,timestamp\n1,2.5,3.5,100\n", "column 'item' must be an integer, line 2 has '2.5'"),
    (read_amazon, "ratings.csv", "A1,B2,5.0\n", "missing column 'timestamp'"),
    (read_user_file, "mine.csv", "user,item,rating\n1,2,good\n", "column 'rating' must be a number, line 2 has 'good'"),
    (read_user_file, "mine.csv", "foo,bar\n1,2\n", "must name a user column"),
    (read_user_file, "mine.csv", "user,item,timestamp\n1,2,soon\n", "line 2 is neither a number nor a date"),
    (read_user_file, "seqs.txt", "7 3 1\n8\n", "line 2 has a user but no items"),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")   # the one line only, no parser warning ("inf")
def test_bad_files_give_one_line_naming_the_file(tmp_path, reader, name, text, expected):
    path = write(tmp_path / name, text)
    with pytest.raises(UserError) as error:
        reader(path)
    message = one_line(error)
    assert str(path) in message and expected in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_ml1m(tmp_path / "ratings.dat")


# --- the user's own file, as spreadsheets, pandas and other recommenders write it ----------------------

# name -> (file bytes, users, items, timestamps (file order where there is no time column), ratings or None)
WRITTEN_BY_TOOLS = {
    "excel_utf8_bom_crlf": (b"\xef\xbb\xbfuser,item,timestamp\r\n1,10,100\r\n2,20,200\r\n",
                            [1, 2], [10, 20], [100, 200], None),
    "excel_semicolon_decimal_comma": ("User ID;Item ID;Rating\r\n1;10;4,5\r\n1;11;3\r\n".encode("cp1252"),
                                      [1, 1], [10, 11], [0, 1], [4.5, 3.0]),
    "quoted_fields": (b'"user","item","title"\n"u 1","10","Heat, 1995"\n"u2","11","say ""hi"""\n',
                      ["u 1", "u2"], [10, 11], [0, 1], None),
    "trailing_empty_line": (b"user,item\n1,10\n2,20\n\n", [1, 2], [10, 20], [0, 1], None),
    "latin1_text": ("user,item\nJos\xe9,caf\xe9\nAnn,cr\xe8me\n".encode("latin-1"),
                    ["Jos\xe9", "Ann"], ["caf\xe9", "cr\xe8me"], [0, 1], None),
    "utf16_unicode_text": ("user\titem\r\n1\t2\r\n3\t4\r\n".encode("utf-16"), [1, 3], [2, 4], [0, 1], None),
    "pandas_index_column": (b",user_id,item_id,rating,timestamp\n0,1,10,4.0,100\n1,1,11,3.0,90\n",
                            [1, 1], [10, 11], [100, 90], [4.0, 3.0]),
    "pandas_unnamed_index_float_ids": (b"Unnamed: 0,userId,movieId\n0,1.0,10.0\n1,2.0,11.0\n",
                                       [1, 2], [10, 11], [0, 1], None),
    "names_with_spaces_and_case": (b"User ID,Item ID,Time Stamp\n1, 10,100\n2, 20,200\n",
                                   [1, 2], [10, 20], [100, 200], None),
    "recbole_inter": (b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                      b"196\t242\t3\t881250949\n186\t302\t3\t891717742.0\n",
                      [196, 186], [242, 302], [881250949, 891717742], [3.0, 3.0]),
    "recbole_inter_spaces": (b"user_id:token item_id:token rating:float timestamp:float\n196 242 3 881250949\n"
                             b"196 302 4 881250950\n", [196, 196], [242, 302], [881250949, 881250950], [3.0, 4.0]),
    "iso_dates_with_zone": (b"user,item,date\n1,2,2021-03-04\n1,3,2021-03-04T10:00:00+01:00\n",
                            [1, 1], [2, 3], [1614816000, 1614816000 + 9 * 3600], None),
    "float_times": (b"user,item,timestamp\n1,2,1.5e9\n1,3,881250949.7\n", [1, 1], [2, 3],
                    [1500000000, 881250949], None),
    "sequences_tab_crlf": (b"1\t2\t3\t4\r\n2\t5\r\n", [1, 1, 1, 2], [2, 3, 4, 5], [0, 1, 2, 3], None),
    "sasrec_pairs": (b"1 10\n2 20\n1 11\n", [1, 2, 1], [10, 20, 11], [0, 1, 2], None),
    "huge_numeric_ids": (b"user,item\n123456789012345678901234567890,1\n5,99999999999999999999\n",
                         ["123456789012345678901234567890", "5"], ["1", "99999999999999999999"], [0, 1], None),
}


@pytest.mark.parametrize("name", list(WRITTEN_BY_TOOLS))
def test_user_file_as_tools_write_it(tmp_path, name):
    content, users, items, times, ratings = WRITTEN_BY_TOOLS[name]
    path = tmp_path / "mine.csv"
    path.write_bytes(content)
    raw = read_user_file(path)
    assert raw.user.tolist() == users
    assert raw.item.tolist() == items
    assert raw.timestamp.tolist() == times and raw.timestamp.dtype == np.int64
    assert (raw.rating is None) if ratings is None else raw.rating.tolist() == ratings


# name -> (file bytes, what the one line says)
REFUSED = {
    "empty": (b"", "the file is empty"),
    "header_only": (b"user,item,rating\r\n", "the file has no rows after its header"),
    "binary_garbage": (bytes(range(256)) * 4, "is not a text file (it holds binary data); save it as CSV text"),
    "xlsx_workbook": (zip_bytes({"xl/workbook.xml": "<workbook/>"}), "is not a text file"),
    "table_without_header": (b"1\t2\t5\t881250949\n2\t3\t4\t881250950\n",
                             "every line has 4 fields and no header names them"),
    "unknown_names_tab": (b"customer\tproduct\n1\t2\n3\t4\n", "the header ['customer', 'product'] must name a user"),
    "time_out_of_range": (b"user,item,timestamp\n1,2,99999999999999999999\n",
                          "column 'timestamp' line 2 is out of range ('99999999999999999999')"),
    "time_infinite": (b"user,item,timestamp\n1,2,inf\n", "column 'timestamp' line 2 is out of range ('inf')"),
    "bad_rating_among_decimal_commas": (b"user;item;rating\n1;2;4,5\n1;3;good\n",
                                        "column 'rating' must be a number, line 3 has 'good'"),
    "bad_row_among_float_times": (b"user,item,timestamp\n1,2,1.5\n1,3\n", "line 3 has no value in column 'timestamp'"),
    # past the first 64 KB that are sniffed: read on, it would be part of an item id
    "nul_deep_in_an_item_id": (b"user,item\n" + b"1,item2\n" * 20_000 + b"1,it\x00em3\n",
                               "line 20002 holds the byte b'\\x00', which no text holds"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_user_file_refused_in_one_line(tmp_path, name):
    content, expected = REFUSED[name]
    path = tmp_path / "mine.csv"
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        read_user_file(path)
    message = one_line(error)
    assert message.startswith(f"{path}: ") and expected in message


def test_user_file_folder_or_unreadable(tmp_path):
    with pytest.raises(UserError) as error:
        read_user_file(tmp_path)
    assert one_line(error) == f"{tmp_path}: is a folder, not a file; fix the file or check --data_file"
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its permissions")
    path = write(tmp_path / "mine.csv", "user,item\n1,2\n")
    path.chmod(0)
    with pytest.raises(UserError) as error:
        read_user_file(path)
    assert one_line(error) == f"{path}: cannot be read (Permission denied); check its permissions"


# --- download, verify, unpack --------------------------------------------------------------------

ML1M_RATINGS = "1::10::5::100\n1::11::4::101\n1::12::3::102\n"


def ml1m_zip(ratings: str = ML1M_RATINGS) -> bytes:
    return zip_bytes({"ml-1m/ratings.dat": ratings, "ml-1m/movies.dat": "10::Film (1999)::Drama\n",
                      "ml-1m/README": "synthetic"})


def source_for(url: str, body: bytes | None = None, code: str = "ml-1m", **changes):
    """The registry's source with its URL pointing at the local server and size/md5 of ``body``."""
    if body is not None:
        changes.setdefault("size", len(body))
        changes.setdefault("md5", hashlib.md5(body).hexdigest())
    return dataclasses.replace(SOURCES[code], url=url, **changes)


def test_download_unpacks_the_top_folder(tmp_path, http_server):
    body = ml1m_zip()
    source = source_for(http_server.serve("/ml-1m.zip", body), body)
    path = ensure_raw(source, tmp_path, None)
    assert path == tmp_path / "ml-1m" / "ratings.dat"
    assert path.read_text() == ML1M_RATINGS
    assert sorted(p.name for p in (tmp_path / "ml-1m").iterdir()) == [".lock", "README", "movies.dat", "ratings.dat"]
    assert read_ml1m(path).item.tolist() == [10, 11, 12]
    # used from disk the second time: the server is not asked again
    assert ensure_raw(source, tmp_path, None) == path
    assert http_server.requests == ["/ml-1m.zip"]


def test_hand_placed_folder_is_used_without_network(tmp_path):
    write(tmp_path / "ml-1m" / "ratings.dat", ML1M_RATINGS)
    source = source_for(closed_port_url("ml-1m.zip"))
    assert ensure_raw(source, tmp_path, None).read_text() == ML1M_RATINGS


def test_hand_placed_valid_archive_is_unpacked_without_network(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ml-1m.zip").write_bytes(ml1m_zip())
    source = source_for(closed_port_url("ml-1m.zip"))
    assert ensure_raw(source, tmp_path, None).read_text() == ML1M_RATINGS


def test_truncated_download_is_redone(tmp_path, http_server):
    body = ml1m_zip()
    source = source_for(http_server.serve("/ml-1m.zip", body, truncate_first=1), body)
    path = ensure_raw(source, tmp_path, None)
    assert http_server.routes["/ml-1m.zip"].hits == 2
    assert path.read_text() == ML1M_RATINGS
    assert not list((tmp_path / "ml-1m").glob("*.part"))


def test_truncated_download_is_refused(tmp_path, http_server):
    body = ml1m_zip()
    url = http_server.serve("/ml-1m.zip", body, truncate_first=99)
    with pytest.raises(UserError) as error:
        ensure_raw(source_for(url, body), tmp_path, None)
    message = one_line(error)
    assert url in message and f"stopped after {len(body) // 2} of {len(body)} bytes" in message
    assert "--data_url" in message and str(tmp_path / "ml-1m" / "ratings.dat") in message
    assert http_server.routes["/ml-1m.zip"].hits == download_module.ATTEMPTS
    assert not (tmp_path / "ml-1m").exists()     # nothing half-done left behind


def test_truncated_zip_without_content_length_is_refused(tmp_path, http_server):
    """A mirror of unknown size (size differs from the registry's) that serves a cut archive."""
    body = ml1m_zip()
    url = http_server.serve("/cut.zip", body[: len(body) - 30])
    with pytest.raises(UserError, match="does not open as a zip"):
        ensure_raw(source_for("http://127.0.0.1:1/ml-1m.zip", body), tmp_path, url)
    assert http_server.routes["/cut.zip"].hits == download_module.ATTEMPTS    # a cut archive: tried again


def test_wrong_md5_is_rejected(tmp_path, http_server):
    body = ml1m_zip()
    source = source_for(http_server.serve("/ml-1m.zip", body), body, md5="0" * 32)
    with pytest.raises(UserError) as error:
        ensure_raw(source, tmp_path, None)
    assert f"md5 {hashlib.md5(body).hexdigest()} differs from the expected {'0' * 32}" in one_line(error)
    assert not (tmp_path / "ml-1m" / "ratings.dat").exists()


def test_wrong_size_from_the_default_url_is_rejected(tmp_path, http_server):
    body = ml1m_zip()
    source = source_for(http_server.serve("/ml-1m.zip", body), body, size=len(body) + 7)
    with pytest.raises(UserError, match=f"got {len(body)} bytes, expected {len(body) + 7}"):
        ensure_raw(source, tmp_path, None)


def test_mirror_of_the_same_archive_is_checked_against_md5(tmp_path, http_server):
    body = ml1m_zip()
    mirror = http_server.serve("/mirror/ml-1m.zip", body)
    source = source_for("http://127.0.0.1:1/ml-1m.zip", body, md5="f" * 32)   # same size: same archive
    with pytest.raises(UserError, match="md5"):
        ensure_raw(source, tmp_path, mirror)


def test_mirror_with_a_repacked_archive_skips_the_registry_md5(tmp_path, http_server):
    body = ml1m_zip()
    flat = zip_bytes({"ratings.dat": ML1M_RATINGS})          # a different (flat) archive
    mirror = http_server.serve("/flat.zip", flat)
    source = source_for("http://127.0.0.1:1/ml-1m.zip", body)
    assert ensure_raw(source, tmp_path, mirror).read_text() == ML1M_RATINGS


def test_archive_without_the_ratings_file_is_rejected(tmp_path, http_server):
    mirror = http_server.serve("/other.zip", zip_bytes({"ml-1m/users.dat": "1::F::1::10::48067\n"}))
    with pytest.raises(UserError, match="holds no ratings.dat"):
        ensure_raw(source_for("http://127.0.0.1:1/ml-1m.zip"), tmp_path, mirror)
    assert http_server.routes["/other.zip"].hits == 1      # a sound archive of something else: not again


def test_corrupt_zip_in_the_raw_folder_forces_a_new_download(tmp_path, http_server):
    body = ml1m_zip()
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::10::5::100\n")        # possibly unpacked from the broken archive
    (folder / "ml-1m.zip").write_bytes(body[: len(body) // 2])
    source = source_for(http_server.serve("/ml-1m.zip", body), body)
    path = ensure_raw(source, tmp_path, None)
    assert path.read_text() == ML1M_RATINGS                 # replaced by the verified download
    assert not (folder / "ml-1m.zip").exists()              # the broken leftover is gone
    assert http_server.requests == ["/ml-1m.zip"]


def test_corrupt_zip_in_the_raw_folder_is_never_used_offline(tmp_path):
    body = ml1m_zip()
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ml-1m.zip").write_bytes(body[: len(body) // 2])
    url = closed_port_url("ml-1m.zip")
    with pytest.raises(UserError) as error:
        ensure_raw(source_for(url, body), tmp_path, None)
    message = one_line(error)
    assert str(folder / "ml-1m.zip") in message and "truncated or corrupt archive" in message
    assert f"cannot download {url}" in message
    assert not (folder / "ratings.dat").exists()
    # with a ratings file beside it, the ratings file is not trusted either
    write(folder / "ratings.dat", ML1M_RATINGS)
    with pytest.raises(UserError, match="is not trusted"):
        ensure_raw(source_for(url, body), tmp_path, None)


def test_a_sound_zip_of_something_else_is_left_alone(tmp_path):
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", ML1M_RATINGS)
    (folder / "posters.zip").write_bytes(zip_bytes({"posters/1.txt": "x"}))
    assert ensure_raw(source_for(closed_port_url()), tmp_path, None).read_text() == ML1M_RATINGS
    assert (folder / "posters.zip").is_file()


@pytest.mark.parametrize("flipped", [2, 0])
def test_zip_with_a_bad_crc_is_detected(tmp_path, flipped):
    stored = bytearray(zip_bytes({"ml-1m/ratings.dat": ML1M_RATINGS}))
    with zipfile.ZipFile(io.BytesIO(bytes(stored))) as archive:
        info = archive.infolist()[0]
    # flip a byte of the compressed data: the archive still opens; testzip() finds the bad member (byte 2)
    # or the member does not decompress at all (byte 0: zlib.error)
    offset = info.header_offset + 30 + len(info.filename) + flipped
    stored[offset] ^= 0xFF
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ml-1m.zip").write_bytes(bytes(stored))
    with pytest.raises(UserError, match="truncated or corrupt archive"):
        ensure_raw(source_for(closed_port_url()), tmp_path, None)


def test_part_file_leftover_forces_a_new_download(tmp_path, http_server):
    body = ml1m_zip()
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::10::5::100\n")
    (folder / "ml-1m.zip.123.part").write_bytes(body[:50])
    path = ensure_raw(source_for(http_server.serve("/ml-1m.zip", body), body), tmp_path, None)
    assert path.read_text() == ML1M_RATINGS
    assert not list(folder.glob("*.part"))


def test_http_error_and_unreachable_host_are_one_line(tmp_path, http_server):
    missing = http_server.url("/nothing.zip")
    with pytest.raises(UserError) as error:
        ensure_raw(source_for("http://127.0.0.1:1/ml-1m.zip"), tmp_path, missing)
    message = one_line(error)
    assert message.startswith(f"cannot download {missing}: HTTP error 404")
    assert "--data_url MIRROR" in message and f"place the file by hand at {tmp_path / 'ml-1m' / 'ratings.dat'}" in message
    refused = closed_port_url()
    with pytest.raises(UserError, match=f"cannot download {refused}: .*refused"):
        ensure_raw(source_for(refused), tmp_path, None)
    assert not (tmp_path / "ml-1m").exists()


def test_timeout_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "TIMEOUT_S", 0.3)
    with socket.socket() as silent:          # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ml-1m.zip"
        with pytest.raises(UserError) as error:
            ensure_raw(source_for(url), tmp_path, None)
    assert "timed out" in one_line(error) and url in str(error.value)


def test_plain_file_source_is_saved_as_raw_file(tmp_path, http_server):
    body = b"A2XYZ,B00ASIN,5.0,1365811200\n"
    source = source_for(http_server.serve("/ratings_Beauty.csv", body), code="beauty")
    path = ensure_raw(source, tmp_path, None)
    assert path == tmp_path / "beauty" / "ratings.csv" and path.read_bytes() == body
    assert read_amazon(path).user.tolist() == ["A2XYZ"]


def test_local_path_as_data_url(tmp_path):
    archive = tmp_path / "upload" / "ml-1m.zip"
    archive.parent.mkdir()
    archive.write_bytes(ml1m_zip())
    path = ensure_raw(source_for(closed_port_url()), tmp_path / "Data", str(archive))
    assert path.read_text() == ML1M_RATINGS


def test_google_drive_links_go_through_gdown(tmp_path, monkeypatch):
    import gdown
    calls = []

    def fake_download(url, output, quiet, fuzzy):
        calls.append(url)
        Path(output).write_bytes(ml1m_zip())
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    link = "https://drive.google.com/file/d/1AbCdEf/view?usp=sharing"
    path = ensure_raw(source_for(closed_port_url()), tmp_path, link)
    assert calls == [link] and path.read_text() == ML1M_RATINGS

    monkeypatch.setattr(gdown, "download", lambda *a, **k: None)
    with pytest.raises(UserError, match="Google Drive returned no file"):
        ensure_raw(source_for(closed_port_url()), tmp_path / "other", link)


def test_registry_sources_are_consistent():
    for code, source in SOURCES.items():
        assert source.code == code
        assert source.archive in ("zip", "file")
        assert source.md5 is None or len(source.md5) == 32
        assert download_module.archive_name(source) == (f"{code}.zip" if source.archive == "zip" else "ratings.csv")
