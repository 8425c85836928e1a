"""sat_tf.files helpers on a local folder and on TensorFlow's in-memory filesystem (`ram://`, as for `gs://`)."""

import hashlib
import os
import uuid

import pytest
import tensorflow as tf

from sat_tf import files


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    # ram:// matches paths by prefix (a listing of ram://x/c also shows ram://x/copy): no name below is a prefix
    # of another.
    return str(tmp_path) if request.param == "local" else f"ram://files-{uuid.uuid4().hex}"


def write(path, data):
    files.makedirs_for(path)
    if tf.io.gfile.exists(path):  # ram:// appends to an existing file opened with "wb"
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def test_content_digest_of_a_file_is_its_sha256_and_follows_its_bytes(root):
    path = f"{root}/model.keras"
    write(path, b"weights v1")
    assert files.content_digest(path) == hashlib.sha256(b"weights v1").hexdigest()
    assert files.content_digest(path, chunk_bytes=3) == hashlib.sha256(b"weights v1").hexdigest()
    write(path, b"weights v2")
    assert files.content_digest(path) == hashlib.sha256(b"weights v2").hexdigest()


def test_content_digest_of_a_directory_follows_its_files_and_their_names(root):
    def saved_model(name, tree):
        for relative, data in tree.items():
            write(f"{root}/{name}/{relative}", data)
        return files.content_digest(f"{root}/{name}")

    tree = {"saved_model.pb": b"graph", "variables/variables.index": b"index", "variables/data": b"w"}
    base = saved_model("a", tree)
    assert saved_model("twin", tree) == base  # a copy elsewhere: the same model
    assert files.content_digest(f"{root}/a/") == base
    assert saved_model("b", {**tree, "variables/data": b"w2"}) != base  # other weights
    assert saved_model("c", {**tree, "extra": b"-"}) != base  # another file
    renamed = {"saved_model.pb": b"graph", "variables/variables.index": b"index", "variables/datb": b"w"}
    assert saved_model("d", renamed) != base
    # Names and bytes are delimited: moving bytes from a file's end to the next name changes the digest.
    assert saved_model("e", {"ab": b"c"}) != saved_model("f", {"a": b"bc"})
    assert os.path.basename(base) == base and len(base) == 64


def test_writing_again_replaces_the_file_and_leaves_no_temporary(root):
    """On ram://, a GFile opened with "w" appends to an existing file (TF 2.21): the writers go through a
    temporary file and a rename, so the second write replaces the first everywhere."""
    files.write_json(f"{root}/run/history.json", {"epochs": [1, 2, 3]})
    files.write_json(f"{root}/run/history.json", {"epochs": [1]})
    assert files.read_json(f"{root}/run/history.json") == {"epochs": [1]}
    files.write_bytes(f"{root}/run/blob", b"longer first content")
    files.write_bytes(f"{root}/run/blob", b"short")
    with tf.io.gfile.GFile(f"{root}/run/blob", "rb") as f:
        assert f.read() == b"short"
    assert sorted(tf.io.gfile.listdir(f"{root}/run")) == ["blob", "history.json"]


def test_a_streamed_file_written_again_holds_only_the_new_rows(root):
    path = f"{root}/certify/sigma_0.25.tsv"
    files.write_json(path + ".json", {"sigma": 0.25})  # its sidecar, written first: on ram:// `path` "exists" now
    for rows in (["idx\tlabel", "0\t3", "1\t7"], ["idx\tlabel"]):
        with files.open_to_stream(path) as f:
            for row in rows:
                print(row, file=f, flush=True)
    assert files.read_text(path) == "idx\tlabel\n"


def test_a_report_written_again_is_the_new_report(root):
    from sat_tf.evaluation import report

    rows = {"clean": {"top1": 0.9, "count": 10}, "pgd2": {"top1": 0.5, "count": 10}}
    report.write_report(rows, f"{root}/report", meta={"run": 1})
    paths = report.write_report({"clean": rows["clean"]}, f"{root}/report", meta={"run": 2})
    assert files.read_json(paths["json"])["meta"] == {"run": 2}
    assert "pgd2" not in files.read_text(paths["markdown"])
