"""Round trips of every item type through the store (columns, items, optics, ragged,
paths, strings), batches, compaction, reopening."""

from __future__ import annotations

import numpy as np
import pytest
from store_helpers import expected_paths, random_columns

from hpcem.errors import StoreError
from hpcem.model import ACQUISITION, ITEM_CLASSES, SET_TYPES, Acquisition, Particle
from hpcem.store import Project, Ragged


def _check_equal(project, item, got_set, cols):
    for fd in item.fields:
        got = got_set.columns[fd.name]
        want = cols[fd.name]
        if fd.kind == "ragged":
            assert isinstance(got, Ragged)
            assert got == want, fd.name
        elif fd.kind == "path":
            assert list(got) == expected_paths(project, want), fd.name
        elif fd.kind == "str":
            assert list(got) == list(want), fd.name
        else:
            assert got.dtype == np.dtype(fd.dtype), fd.name
            np.testing.assert_array_equal(got, want, err_msg=fd.name)


@pytest.mark.parametrize("set_type", sorted(SET_TYPES))
def test_columns_round_trip_every_type(project, run_id, set_type):
    item = SET_TYPES[set_type]
    rng = np.random.default_rng(len(set_type))
    cols = random_columns(item, 57, rng)
    with project.create_set(run_id, "out", set_type, inputs=["1:in"], step="s1") as w:
        w.append_columns(
            {
                k: (v[:20] if not isinstance(v, Ragged) else v.take(np.arange(20)))
                for k, v in cols.items()
            }
        )
        w.append_columns(
            {
                k: (v[20:] if not isinstance(v, Ragged) else v.take(np.arange(20, 57)))
                for k, v in cols.items()
            }
        )
    s = Project.open(project.path).open_set(run_id, "out")
    assert s.type_name == set_type and len(s) == 57 and not s.is_open
    assert s.lineage == {"run_id": run_id, "step": "s1", "inputs": ["1:in"]}
    _check_equal(project, item, s, cols)


def _assert_same(fd, va, vb):
    if fd.kind == "ragged":
        np.testing.assert_array_equal(np.asarray(vb), np.asarray(va, dtype=fd.dtype))
    elif fd.kind in ("path", "str"):
        assert vb == va, fd.name
    else:
        np.testing.assert_array_equal(
            np.asarray(vb, dtype=fd.dtype), np.asarray(va, dtype=fd.dtype), err_msg=fd.name
        )


@pytest.mark.parametrize("set_type", sorted(SET_TYPES))
def test_items_round_trip_every_type(project, run_id, set_type):
    item = SET_TYPES[set_type]
    cls = ITEM_CLASSES[item.name]
    cols = random_columns(item, 9, np.random.default_rng(1))
    items = []
    for i in range(9):
        kw = {}
        for fd in item.fields:
            v = cols[fd.name][i]
            kw[fd.name] = v if fd.kind == "ragged" else (v.item() if hasattr(v, "item") else v)
        items.append(cls(**kw))
    with project.create_set(run_id, "items", set_type) as w:
        w.append(items[:4])
        w.append(items[4:])
    s = project.open_set(run_id, "items")
    back = list(s)
    assert len(back) == 9 and all(type(b) is cls for b in back)
    for i, (a, b) in enumerate(zip(items, back, strict=True)):
        for fd in item.fields:
            va, vb = getattr(a, fd.name), getattr(b, fd.name)
            if fd.kind == "path":
                va = expected_paths(project, [va])[0]
            _assert_same(fd, va, vb)
            _assert_same(fd, vb, getattr(s[i], fd.name))  # set[i] == iteration
    fresh = project.open_set(run_id, "items")  # nothing cached: rows read from segments
    for i in (0, 3, 4, 8, -1, -9):
        for fd in item.fields:
            _assert_same(fd, getattr(back[i], fd.name), getattr(fresh[i], fd.name))
    with pytest.raises(IndexError):
        fresh[9]
    assert s[-1].id == items[-1].id


def test_optics_table_round_trip(project, run_id):
    og = [
        Acquisition(
            optics_group=1,
            name="og1",
            voltage_kV=300,
            spherical_aberration_mm=2.7,
            amplitude_contrast=0.1,
            pixel_size_A=1.06,
            dose_per_frame_e_A2=1.2,
            magnification=105000,
        ),
        Acquisition(optics_group=2, name="og2 ∆", voltage_kV=200, pixel_size_A=0.83),
    ]
    with project.create_set(run_id, "p", "hpcem.SetOfParticles") as w:
        w.set_optics(og)
        w.append([Particle(optics_group=2, defocus_u=1.0)])
    optics = project.open_set(run_id, "p").optics
    assert set(optics) == set(ACQUISITION.field_names)
    assert list(optics["name"]) == ["og1", "og2 ∆"]
    np.testing.assert_allclose(optics["voltage_kV"], [300, 200])
    np.testing.assert_allclose(optics["pixel_size_A"], [1.06, 0.83], rtol=1e-6)
    assert np.isnan(optics["spherical_aberration_mm"][1])


def test_ids_are_numbered_on_and_defaults_fill_missing(project, run_id):
    with project.create_set(run_id, "p", "hpcem.SetOfParticles") as w:
        w.append_columns({"defocus_u": [1.0, 2.0]})
        w.append_columns({"defocus_u": [3.0], "image": ["x.mrcs"]})
    s = project.open_set(run_id, "p")
    np.testing.assert_array_equal(s.ids, [0, 1, 2])
    np.testing.assert_array_equal(s.columns["weight"], [1, 1, 1])
    assert list(s.columns["image"]) == ["", "", str(project.path / "x.mrcs")]
    assert s.files == ["x.mrcs"]


def test_bad_columns_are_refused(project, run_id):
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    with pytest.raises(StoreError, match="unknown column.*'defocus'"):
        w.append_columns({"defocus": [1.0]})
    with pytest.raises(StoreError, match="different lengths"):
        w.append_columns({"defocus_u": [1.0], "defocus_v": [1.0, 2.0]})
    with pytest.raises(StoreError, match="unknown set type"):
        project.create_set(run_id, "q", "hpcem.SetOfThings")
    w.close()
    with pytest.raises(StoreError, match="closed"):
        w.append_columns({"defocus_u": [1.0]})
    with pytest.raises(StoreError, match="already has a set"):
        project.create_set(run_id, "p", "hpcem.SetOfParticles")


def test_compaction_keeps_rows_and_removes_old_segments(project, run_id):
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    w.compact_threshold = 3
    for k in range(10):
        w.append_columns(
            {"defocus_u": np.full(5, k, dtype=np.float32), "image": [f"s{k}.mrcs"] * 5}
        )
    w.close()
    s = project.open_set(run_id, "p")
    segments = sorted(p.name for p in s.path.glob("seg-*.h5"))
    assert len(segments) <= 3
    np.testing.assert_array_equal(s.ids, np.arange(50))
    np.testing.assert_array_equal(s.columns["defocus_u"], np.repeat(np.arange(10), 5))
    assert list(s.columns["image"][::5]) == [str(project.path / f"s{k}.mrcs") for k in range(10)]


def test_open_set_writer_continues_a_set(project, run_id):
    with project.create_set(run_id, "p", "hpcem.SetOfCoordinates") as w:
        w.append_columns({"x": [1.0, 2.0], "micrograph_id": [7, 7]})
    with project.open_set_writer(run_id, "p") as w:
        assert w.n_rows == 2
        w.append_columns({"x": [3.0]})
    s = project.open_set(run_id, "p")
    np.testing.assert_array_equal(s.columns["x"], [1, 2, 3])
    np.testing.assert_array_equal(s.ids, [0, 1, 2])


def test_run_outputs_open_sets_lazily(project, run_id):
    with project.create_set(run_id, "mics", "hpcem.SetOfMicrographs") as w:
        w.append_columns({"image": ["m1.mrc", "m2.mrc"]})
    run = Project.open(project.path).runs[0]
    assert run.output_types == {"mics": "hpcem.SetOfMicrographs"}
    assert len(run.outputs["mics"]) == len(project.open_set(run.id, "mics"))
    mics = run.outputs["mics"]
    assert len(mics) == 2 and mics.columns["image"][1] == str(project.path / "m2.mrc")
    with pytest.raises(KeyError, match="no output 'nope'"):
        run.outputs["nope"]


def test_streaming_reader_sees_growth_after_refresh(project, run_id):
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    w.append_columns({"defocus_u": [1.0]})
    s = project.open_set(run_id, "p")
    assert s.is_open and len(s) == 1
    w.append_columns({"defocus_u": [2.0, 3.0]})
    assert len(s) == 1  # a snapshot does not change
    s2 = s.refresh()
    np.testing.assert_array_equal(s2.columns["defocus_u"], [1, 2, 3])
    w.close()
    assert not s2.refresh().is_open


def test_snapshot_survives_compaction_that_deleted_its_segments(project, run_id):
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    w.compact_threshold = 3
    for k in range(3):
        w.append_columns({"defocus_u": np.full(4, k, dtype=np.float32)})
    snap = project.open_set(run_id, "p")  # manifest read; segments not opened yet
    old = {p.name for p in snap.path.glob("seg-*.h5")}
    w.append_columns({"defocus_u": np.full(4, 9, dtype=np.float32)})  # compacts
    assert not old & {p.name for p in snap.path.glob("seg-*.h5")}  # old segments gone
    np.testing.assert_array_equal(snap.columns["defocus_u"], np.repeat([0, 1, 2], 4))
    assert len(snap) == 12 and len(snap.refresh()) == 16
    w.close()


def test_leftovers_of_a_crashed_writer_are_ignored_then_cleaned(project, run_id):
    with project.create_set(run_id, "p", "hpcem.SetOfParticles") as w:
        w.append_columns({"defocus_u": [1.0, 2.0]})
    d = project.open_set(run_id, "p").path
    listed = {p.name for p in d.glob("seg-*.h5")}
    (d / "manifest.h5.tmp-123-abcd1234").write_bytes(b"half a manifest")
    (d / "seg-000099.h5.tmp-123-abcd1234").write_bytes(b"half a segment")
    (d / "seg-000099.h5").write_bytes(b"an unlisted segment")
    (project.path / "project.h5.tmp-7-00ff00ff").write_bytes(b"half an index")
    user_file = project.run_dir(run_id) / "notes.tmp-1-aa"
    user_file.write_text("a protocol's own file")
    s = project.open_set(run_id, "p")  # readers ignore leftovers
    np.testing.assert_array_equal(s.columns["defocus_u"], [1, 2])
    project.open_set_writer(run_id, "p").close()  # the next writer cleans them
    assert {p.name for p in d.iterdir()} == listed | {"manifest.h5"}
    project.set_label(run_id, "x")
    assert not list(project.path.glob("project.h5.tmp-*"))
    assert user_file.exists()


def test_delete_set(project, run_id):
    with project.create_set(run_id, "p", "hpcem.SetOfParticles") as w:
        w.append_columns({"defocus_u": [1.0, 2.0]})
    snap = project.open_set(run_id, "p")
    snap.columns["defocus_u"]  # segments open
    project.delete_set(run_id, "p")
    assert project.run(run_id).output_types == {}
    with pytest.raises(StoreError, match="has no set 'p'"):
        project.open_set(run_id, "p")
    assert not (project.run_dir(run_id) / "sets" / "p").exists()
    # a column never read before the delete: read now from the snapshot's open segments
    np.testing.assert_array_equal(snap.columns["id"], [0, 1])
    with project.create_set(run_id, "p", "hpcem.SetOfParticles") as w:  # name is free again
        w.append_columns({"defocus_u": [3.0]})
    assert len(project.open_set(run_id, "p")) == 1
