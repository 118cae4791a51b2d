"""Size-tiered compaction of sets (and of the step log, which uses the same policy).

The policy is a pure function of the parts' sizes, tested on long simulated streams; the
set writer is tested for what a streaming set pays: few merges that touch old rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcem.store import manifest
from hpcem.store.manifest import size_class, tiered_merge_start


def simulate(appends, fanout, max_parts=None, check=None):
    """Apply the policy after each append; (parts, rows rewritten, worst single merge)."""
    parts, rewritten, worst = [], 0, 0
    for n in appends:
        parts.append(int(n))
        start = tiered_merge_start(parts, fanout, max_parts)
        if start is not None:
            merged = sum(parts[start:])
            rewritten += merged
            worst = max(worst, merged)
            parts = [*parts[:start], merged]
        if check:
            check(parts)
    return parts, rewritten, worst


def old_policy(appends, threshold=16):
    """What sets did before: merge everything when there are more than 16 segments."""
    parts, rewritten, worst = [], 0, 0
    for n in appends:
        parts.append(int(n))
        if len(parts) > threshold:
            rewritten += sum(parts)
            worst = max(worst, sum(parts))
            parts = [sum(parts)]
    return parts, rewritten, worst


def test_size_class():
    assert [size_class(w, 4) for w in (0, 1, 3, 4, 15, 16, 63, 64)] == [0, 0, 0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("fanout", [2, 4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_classes_never_grow_towards_the_newest_and_each_holds_few_parts(fanout, seed):
    rng = np.random.default_rng(seed)
    sizes = np.maximum(1, rng.lognormal(3, 2, 3000)).astype(int)

    def check(parts):
        classes = [size_class(p, fanout) for p in parts]
        assert classes == sorted(classes, reverse=True)
        assert max(classes.count(c) for c in set(classes)) <= fanout - 1
        assert len(parts) <= (fanout - 1) * (size_class(sum(parts), fanout) + 1)

    parts, _, _ = simulate(sizes, fanout, check=check)
    assert sum(parts) == sizes.sum()


def test_only_the_newest_parts_are_merged_so_old_rows_stay_put():
    rng = np.random.default_rng(1)
    parts = []
    for n in rng.integers(1, 500, 2000):
        before = list(parts)
        parts.append(int(n))
        start = tiered_merge_start(parts, 4)
        if start is not None:
            assert parts[:start] == before[:start]
            parts = [*parts[:start], sum(parts[start:])]


def test_a_streaming_set_rewrites_each_row_a_logarithmic_number_of_times():
    n_appends, rows = 1000, 300
    total = n_appends * rows
    parts, rewritten, _ = simulate(
        [rows] * n_appends, manifest.COMPACT_FANOUT, manifest.COMPACT_THRESHOLD
    )
    levels = math.log(n_appends, manifest.COMPACT_FANOUT) + 1
    assert rewritten <= levels * total  # each row: about once per class it climbs
    assert len(parts) <= manifest.COMPACT_THRESHOLD
    _, old_rewritten, _ = old_policy([rows] * n_appends)
    assert old_rewritten > 5 * rewritten  # merge-all: O(total / 16) per row


def test_past_max_parts_the_newest_are_merged_whatever_their_sizes():
    # sizes that tiering alone would keep apart: one big part, then alternating sizes
    sizes = [10_000] + [1, 64] * 30
    parts, _, _ = simulate(sizes, 4, max_parts=5, check=lambda p: len(p) <= 5)
    assert parts[0] == 10_000 and sum(parts) == sum(sizes)


def test_set_writer_streaming_seldom_touches_its_oldest_rows(project, run_id, monkeypatch):
    """Every 16 appends the old policy merged the whole set; tiered merges that reach the
    first segment happen about log_4(appends) times."""
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    merges = []
    real = w._merge_tail

    def spy(start):
        merges.append((start, len(w._m.segments)))
        real(start)

    monkeypatch.setattr(w, "_merge_tail", spy)
    n = 150
    for k in range(n):
        w.append_columns({"defocus_u": [float(k)], "image": [f"m{k % 7}.mrcs"]})
        assert len(w._m.segments) <= w.compact_threshold
    w.close()
    whole = [m for m in merges if m[0] == 0]
    assert merges and len(whole) <= 4, merges  # the old policy: 9
    s = project.open_set(run_id, "p")
    np.testing.assert_array_equal(s.ids, np.arange(n))
    np.testing.assert_array_equal(s.columns["defocus_u"], np.arange(n, dtype=np.float32))
    assert s.columns["image"][-1] == str(project.path / f"m{(n - 1) % 7}.mrcs")
    on_disk = sorted(p.name for p in s.path.glob("seg-*.h5"))
    assert on_disk == sorted(name for name, _ in s._segments)


def test_compact_still_merges_everything(project, run_id):
    w = project.create_set(run_id, "p", "hpcem.SetOfParticles")
    for k in range(6):
        w.append_columns({"defocus_u": np.full(3, k, dtype=np.float32)})
    assert len(w._m.segments) > 1
    w.compact()
    assert len(w._m.segments) == 1
    w.close()
    s = project.open_set(run_id, "p")
    np.testing.assert_array_equal(s.columns["defocus_u"], np.repeat(np.arange(6), 3))
