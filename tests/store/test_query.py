"""Queries, subsets and ordering against numpy-computed expectations (random data)."""

from __future__ import annotations

import numpy as np
import pytest
from store_helpers import random_columns

from hpcem.errors import QueryError
from hpcem.model import PARTICLE
from hpcem.store import Project

N = 5000


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    project = Project.create(tmp_path_factory.mktemp("q") / "proj")
    run = project.create_run("hpcem.test")
    rng = np.random.default_rng(7)
    cols = random_columns(PARTICLE, N, rng)
    cols["defocus_u"] = rng.uniform(5000, 35000, N).astype(np.float32)
    cols["ctf_fit_resolution"] = rng.uniform(2, 10, N).astype(np.float32)
    cols["class_id"] = rng.integers(0, 6, N).astype(np.int32)
    with project.create_set(run.id, "p", "hpcem.SetOfParticles") as w:
        for lo in range(0, N, 1500):  # several segments
            w.append_columns({k: v[lo : lo + 1500] for k, v in cols.items()})
    return project.open_set(run.id, "p"), cols


CASES = [
    (
        "defocus_u between 15000 and 25000 and ctf_fit_resolution < 5",
        lambda c: (
            (c["defocus_u"] >= 15000) & (c["defocus_u"] <= 25000) & (c["ctf_fit_resolution"] < 5)
        ),
    ),
    (
        "class_id in (1, 3, 5) or not (rot >= 1000)",
        lambda c: np.isin(c["class_id"], [1, 3, 5]) | ~(c["rot"] >= 1000),
    ),
    (
        "(defocus_u > 30000 or defocus_u <= 6000) and class_id != 0",
        lambda c: ((c["defocus_u"] > 30000) | (c["defocus_u"] <= 6000)) & (c["class_id"] != 0),
    ),
    ("id == 23", lambda c: c["id"] == 23),
    (
        "defocus_u not between 1e4 and 2.5E4",
        lambda c: ~((c["defocus_u"] >= 1e4) & (c["defocus_u"] <= 2.5e4)),
    ),
    (
        "class_id not in (0,1) AND psi>=-10.5",
        lambda c: ~np.isin(c["class_id"], [0, 1]) & (c["psi"] >= -10.5),
    ),
    ("image == 'Extract/a.mrcs'", lambda c: c["image"] == "Extract/a.mrcs"),
]


@pytest.mark.parametrize(("query", "expect"), CASES)
def test_query_matches_numpy(particles, query, expect):
    s, cols = particles
    mask = s.where(query)
    want = expect(cols)
    assert mask.dtype == bool and mask.shape == (N,)
    assert 0 < want.sum() < N or query == "id == 23"
    np.testing.assert_array_equal(mask, want)


def test_keyword_form(particles):
    s, cols = particles
    mask = s.where(defocus_u=(15000, 25000), class_id=[2, 4])
    want = (
        (cols["defocus_u"] >= 15000)
        & (cols["defocus_u"] <= 25000)
        & np.isin(cols["class_id"], [2, 4])
    )
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(
        s.where("ctf_fit_resolution < 4", class_id=3),
        (cols["ctf_fit_resolution"] < 4) & (cols["class_id"] == 3),
    )


def test_subset_by_mask_and_ids_and_order(particles):
    s, cols = particles
    mask = s.where("defocus_u < 20000")
    sub = s.subset(mask)
    np.testing.assert_array_equal(sub["id"], cols["id"][mask])
    np.testing.assert_array_equal(sub["defocus_u"], cols["defocus_u"][mask])
    np.testing.assert_array_equal(sub["rot"], cols["rot"][mask])  # every column follows
    assert len(sub["id"]) == int(mask.sum()) > 0
    ids = cols["id"][[5, 17, 4000]]
    by_id = s.select_ids(ids[::-1])
    np.testing.assert_array_equal(by_id["id"], ids)  # stored order
    np.testing.assert_array_equal(s.subset(list(ids))["rot"], cols["rot"][[5, 17, 4000]])
    order = s.order_by("defocus_u")
    assert np.all(np.diff(cols["defocus_u"][order]) >= 0)
    desc = s.order_by("defocus_u", descending=True)
    assert np.all(np.diff(cols["defocus_u"][desc]) <= 0)


def test_subset_written_as_new_set_keeps_values_and_paths(particles):
    s, cols = particles
    project = Project.open(s.project_path)
    mask = s.where("class_id == 2")
    with project.create_set(
        s.run_id, "class2", "hpcem.SetOfParticles", inputs=[f"{s.run_id}:p"], step="subset"
    ) as w:
        w.set_optics(s.optics)
        w.append_columns(s.subset(mask))
    t = project.open_set(s.run_id, "class2")
    assert len(t) == mask.sum()
    np.testing.assert_array_equal(t.ids, cols["id"][mask])
    assert list(t.columns["image"]) == list(s.columns["image"][mask])
    assert set(t.files) <= set(s.files)  # stored relative again, not absolute
    assert t.lineage["inputs"] == [f"{s.run_id}:p"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("defocus < 3", "unknown column 'defocus'; did you mean defocus_"),
        ("defocus_u between 1 or 2", "expected 'and'"),
        ("defocus_u < ", "expected value"),
        ("(class_id == 1", "expected ')'"),
        ("class_id == 1 2", "unexpected 2"),
        ("class_id == 'a'", "numeric"),
        ("image < 3", "text"),
        ("class_id ; 1", "cannot read"),
        ("", "empty query"),
        ("__import__('os')", "unknown column '__import__'"),
    ],
)
def test_bad_queries_raise_query_error(particles, query, message):
    s, _ = particles
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        s.where(query)
