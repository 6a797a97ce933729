"""manifest: task keys, scene checksums, durable records, shard selection."""

from __future__ import annotations

import os

import pytest

from geodetect.errors import InputError
from geodetect.manifest import (
    EDGE_BYTES,
    Manifest,
    Record,
    canonical_json,
    file_sha256,
    finished,
    manifest_path,
    parse_shard,
    scene_checksum,
    shard_select,
    task_key,
)


def test_task_key_is_canonical_and_sensitive():
    a = task_key(model="m", scene="s", params={"tile": 512, "threshold": 0.3, "tta": False})
    b = task_key(params={"tta": False, "threshold": 0.3, "tile": 512}, scene="s", model="m")
    assert a == b  # key order does not matter
    assert (
        task_key(model="m2", scene="s", params={"tile": 512, "threshold": 0.3, "tta": False}) != a
    )
    assert (
        task_key(model="m", scene="s", params={"tile": 512, "threshold": 0.31, "tta": False}) != a
    )
    assert canonical_json({"w": (1, 2)}) == '{"w":[1,2]}'


def test_scene_checksum_sees_edits_anywhere(tmp_path):
    p = tmp_path / "scene.tif"
    data = bytearray(os.urandom(3 * EDGE_BYTES))
    p.write_bytes(data)
    first = scene_checksum(p)
    assert scene_checksum(p) == first
    st = p.stat()
    data[len(data) // 2] ^= 0xFF  # a block rewritten in the middle: mtime moves
    p.write_bytes(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert scene_checksum(p) != first
    data[len(data) // 2] ^= 0xFF
    data[-1] ^= 0xFF  # same size and mtime (cp -p of another file): edge bytes differ
    p.write_bytes(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert scene_checksum(p) != first
    assert scene_checksum("/vsis3/bucket/x.tif").startswith("path:")


def test_file_sha256(tmp_path):
    import hashlib

    p = tmp_path / "m.pt"
    p.write_bytes(b"x" * 3_000_000)
    assert file_sha256(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_manifest_survives_a_cut_line_and_appends_after_it(tmp_path):
    m = Manifest(tmp_path / "d.gpkg.manifest.json")
    m.append(Record("k1", "k1.gpkg", "a", 3, {"valid_tiles": 2}))
    m.append(Record("k2", "k2.gpkg", "b", 0))
    m.path.write_bytes(m.path.read_bytes()[:-15])  # kill -9 during the second write
    assert list(m.read()) == ["k1"]
    m.append(Record("k3", "k3.gpkg"))
    recs = m.read()
    assert list(recs) == ["k1", "k3"]
    assert recs["k1"].attrs == {"valid_tiles": 2} and recs["k1"].rows == 3


def test_finished_needs_the_part_file(tmp_path):
    out = tmp_path / "d.gpkg"
    parts = tmp_path / "d.gpkg.parts"
    parts.mkdir()
    Manifest(manifest_path(out)).append(Record("a", "a.gpkg"))
    Manifest(manifest_path(out, (2, 3))).append(Record("b", "b.gpkg"))
    (parts / "b.gpkg").write_bytes(b"x")
    assert set(finished(out, parts, ["a", "b", "c"])) == {"b"}  # found in a shard manifest
    (parts / "a.gpkg").write_bytes(b"x")
    assert set(finished(out, parts, ["a", "b"])) == {"a", "b"}
    assert set(finished(out, parts, ["a"])) == {"a"}


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 1 / 1 ") == (1, 1)
    assert parse_shard(None) is None
    for bad in ["0/4", "5/4", "1/0", "x", "1-4", "-1/4"]:
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_shards_disjoint_and_complete(n):
    keys = [f"/data/scene{i % 5}.tif\x00{i:04d}" for i in range(17)]
    shards = [shard_select(keys, (i, n)) for i in range(1, n + 1)]
    flat = [j for s in shards for j in s]
    assert sorted(flat) == list(range(17))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    # the same tasks listed in another order land in the same shards
    rev = keys[::-1]
    for i in range(1, n + 1):
        assert {rev[j] for j in shard_select(rev, (i, n))} == {keys[j] for j in shards[i - 1]}
