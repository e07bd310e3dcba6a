"""Property tests of the arithmetic every map depends on: reflect indices and halos, block reads
against a naive reflect-padded scene, patch gathering against a per-pixel loop, and invariants
of the accuracy metrics. (tests/s2fin_cli/io/test_windows.py and tests/s2fin_cli/test_metrics.py
already cover reflect == np.pad within one period, indices in range, exact block cover, metric
bounds, perfect predictions, permutation and block invariance: not repeated here.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rasterio.windows import Window

from s2fin_cli.classes import ClassTable
from s2fin_cli.io.reader import Scene, open_stacked_scene
from s2fin_cli.io.windows import iter_blocks, reflect_indices
from s2fin_cli.metrics import AccuracyReport, ConfusionAccumulator
from s2fin_cli.patches import PatchGeometry, cut_inputs, gather_patches
from tests.helpers import scene_arrays, utm_grid, write_stacked

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def naive_reflect(i: int, size: int) -> int:
    """Bounce ``i`` off the edges until it lies in 0..size-1 (edge pixel not repeated)."""
    if size == 1:
        return 0
    while not 0 <= i < size:
        i = -i if i < 0 else 2 * (size - 1) - i
    return i


# -- windows and halos ------------------------------------------------------------------------

@FAST
@given(size=st.integers(1, 9), start=st.integers(-60, 60), length=st.integers(1, 80))
def test_reflect_indices_equal_repeated_bouncing(size: int, start: int, length: int) -> None:
    """Any overhang, several periods included (np.pad can only reflect once)."""
    expected = [naive_reflect(i, size) for i in range(start, start + length)]
    np.testing.assert_array_equal(reflect_indices(start, length, size), expected)


@FAST
@given(size=st.integers(2, 30), i=st.integers(-200, 200))
def test_reflection_is_symmetric_and_periodic(size: int, i: int) -> None:
    def at(j: int) -> int:
        return int(reflect_indices(j, 1, size)[0])

    assert at(-i) == at(i)  # mirror about pixel 0
    assert at(2 * (size - 1) - i) == at(i)  # mirror about the last pixel
    assert at(i + 2 * (size - 1)) == at(i)  # period


@FAST
@given(h=st.integers(1, 50), w=st.integers(1, 50), b=st.integers(1, 20))
def test_blocks_are_row_major_and_aligned_to_the_block_grid(h: int, w: int, b: int) -> None:
    windows = list(iter_blocks(h, w, b))
    offsets = [(int(win.row_off), int(win.col_off)) for win in windows]
    assert offsets == sorted(offsets)
    for win in windows:
        assert win.row_off % b == 0 and win.col_off % b == 0
        # Only the last row/column of blocks is cut short, by the grid's edge.
        assert win.height == b or win.row_off + win.height == h
        assert win.width == b or win.col_off + win.width == w


def test_iter_blocks_refuses_a_zero_block() -> None:
    with pytest.raises(ValueError):
        list(iter_blocks(3, 3, 0))


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Scene, np.ndarray]]:
    """A 9 x 7 stacked scene (3 optical + 2 aux bands) and its full array."""
    height, width = 7, 9
    optical, aux = scene_arrays(height, width, 3, 2, seed=61)
    path = write_stacked(tmp_path_factory.mktemp("props") / "s.tif", optical, aux,
                         utm_grid(width, height))
    scene = open_stacked_scene(path)
    yield scene, np.concatenate([optical, aux])
    scene.close()


@FAST
@given(row=st.integers(0, 6), col=st.integers(0, 8), height=st.integers(1, 7),
       width=st.integers(1, 9), halo=st.integers(0, 12))
def test_block_read_with_halo_equals_naive_reflect_padding(
        small_scene: tuple[Scene, np.ndarray], row: int, col: int, height: int, width: int,
        halo: int) -> None:
    scene, full = small_scene
    height, width = min(height, 7 - row), min(width, 9 - col)
    block = scene.read(Window(col, row, width, height), halo)
    rows = [naive_reflect(r, 7) for r in range(row - halo, row + height + halo)]
    cols = [naive_reflect(c, 9) for c in range(col - halo, col + width + halo)]
    expected = full[:, rows][:, :, cols]
    np.testing.assert_array_equal(block.optical, expected[:3])
    np.testing.assert_array_equal(block.aux, expected[3:])
    assert block.core_valid.shape == (height, width)


# -- patches ----------------------------------------------------------------------------------

def naive_patch(padded: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    half = size // 2
    out = np.empty((padded.shape[0], size, size), padded.dtype)
    for dr in range(-half, half + 1):
        for dc in range(-half, half + 1):
            out[:, dr + half, dc + half] = padded[:, row + dr, col + dc]
    return out


@st.composite
def padded_and_centres(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    size = draw(st.sampled_from([1, 3, 5, 7]))
    half = size // 2
    channels = draw(st.integers(1, 4))
    height = draw(st.integers(size, size + 10))
    width = draw(st.integers(size, size + 10))
    padded = draw(hnp.arrays(np.float32, (channels, height, width),
                             elements=st.floats(-1e3, 1e3, width=32)))
    n = draw(st.integers(0, 20))
    rows = draw(hnp.arrays(np.int64, n, elements=st.integers(half, height - 1 - half)))
    cols = draw(hnp.arrays(np.int64, n, elements=st.integers(half, width - 1 - half)))
    return padded, rows, cols, size


@FAST
@given(padded_and_centres())
def test_gather_patches_equals_a_per_pixel_loop(
        case: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    padded, rows, cols, size = case
    out = gather_patches(torch.from_numpy(padded), torch.from_numpy(rows),
                         torch.from_numpy(cols), size)
    assert tuple(out.shape) == (rows.size, padded.shape[0], size, size)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        np.testing.assert_array_equal(out[i].numpy(), naive_patch(padded, int(r), int(c), size))


@FAST
@given(row=st.integers(0, 6), col=st.integers(0, 8), patch=st.sampled_from([3, 5, 7]))
def test_patch_of_a_block_equals_the_patch_of_the_reflected_scene(
        small_scene: tuple[Scene, np.ndarray], row: int, col: int, patch: int) -> None:
    """What predict and train do: a block read with halo patch//2, centres shifted by the halo,
    gives every pixel the patch of the whole scene reflect-padded (blocks do not show)."""
    scene, full = small_scene
    geometry = PatchGeometry(patch, 1)
    halo = geometry.halo
    block = scene.read(Window(col, row, 1, 1), halo)
    z_opt, z_aux = torch.from_numpy(block.optical), torch.from_numpy(block.aux)
    centre = torch.tensor([halo])
    spectral, spatial, active = cut_inputs(z_opt, z_opt, z_aux, centre, centre, geometry)
    rows = [naive_reflect(r, 7) for r in range(row - halo, row + halo + 1)]
    cols = [naive_reflect(c, 9) for c in range(col - halo, col + halo + 1)]
    expected = full[:, rows][:, :, cols]
    np.testing.assert_array_equal(spatial[0].numpy(), expected[:3])
    np.testing.assert_array_equal(active[0].numpy(), expected[3:])
    np.testing.assert_array_equal(spectral[0, :, 0, 0].numpy(), full[:3, row, col])


# -- metrics ----------------------------------------------------------------------------------

K = 4
TABLE = ClassTable.from_ids(range(1, K + 1))


@st.composite
def labelled_pairs(draw: st.DrawFn, *, unpredicted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 150))
    ref = draw(hnp.arrays(np.int64, n, elements=st.integers(1, K)))
    low = 0 if unpredicted else 1
    pred = draw(hnp.arrays(np.int64, n, elements=st.integers(low, K)))
    return ref, pred


@FAST
@given(labelled_pairs())
def test_kappa_never_exceeds_overall_accuracy(pair: tuple[np.ndarray, np.ndarray]) -> None:
    r = AccuracyReport.from_arrays(*pair, TABLE)
    assert r.kappa <= r.overall_accuracy + 1e-12


@FAST
@given(labelled_pairs(), st.permutations(range(1, K + 1)))
def test_renaming_classes_permutes_per_class_figures(pair: tuple[np.ndarray, np.ndarray],
                                                     perm: list[int]) -> None:
    ref, pred = pair
    lut = np.array([0, *perm])
    a = AccuracyReport.from_arrays(ref, pred, TABLE)
    b = AccuracyReport.from_arrays(lut[ref], lut[pred], TABLE)
    for name in ("overall_accuracy", "average_accuracy", "kappa", "macro_f1"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), nan_ok=True)
    order = np.asarray(perm) - 1  # class i of a is class perm[i] of b
    for name in ("producers_accuracy", "users_accuracy", "f1", "support", "unpredicted"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name)[order])


@FAST
@given(labelled_pairs(unpredicted=False))
def test_swapping_reference_and_prediction_transposes(
        pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, pred = pair
    a = AccuracyReport.from_arrays(ref, pred, TABLE)
    b = AccuracyReport.from_arrays(pred, ref, TABLE)
    np.testing.assert_array_equal(a.matrix[:, :K], b.matrix[:, :K].T)
    assert a.overall_accuracy == pytest.approx(b.overall_accuracy)
    assert a.kappa == pytest.approx(b.kappa, nan_ok=True)
    np.testing.assert_allclose(a.producers_accuracy, b.users_accuracy)
    np.testing.assert_allclose(a.f1, b.f1)


@FAST
@given(labelled_pairs())
def test_f1_is_the_harmonic_mean_and_aa_the_mean_producers_accuracy(
        pair: tuple[np.ndarray, np.ndarray]) -> None:
    r = AccuracyReport.from_arrays(*pair, TABLE)
    pa, ua = r.producers_accuracy, r.users_accuracy
    both = ~np.isnan(pa) & ~np.isnan(ua) & ((pa + ua) > 0)
    np.testing.assert_allclose(r.f1[both], 2 * pa[both] * ua[both] / (pa[both] + ua[both]))
    assert r.average_accuracy == pytest.approx(float(np.mean(pa[r.present])))
    assert r.n_samples == pair[0].size
    assert r.n_unpredicted == int((pair[1] == 0).sum())


@FAST
@given(labelled_pairs(), labelled_pairs())
def test_merge_is_commutative_and_equals_one_pass(a: tuple[np.ndarray, np.ndarray],
                                                  b: tuple[np.ndarray, np.ndarray]) -> None:
    def acc(*pairs: tuple[np.ndarray, np.ndarray]) -> ConfusionAccumulator:
        out = ConfusionAccumulator(TABLE)
        for ref, pred in pairs:
            out.update(ref, pred)
        return out

    ab, ba = acc(a), acc(b)
    ab.merge(acc(b))
    ba.merge(acc(a))
    one = acc((np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])))
    np.testing.assert_array_equal(ab.matrix, one.matrix)
    np.testing.assert_array_equal(ba.matrix, one.matrix)


@FAST
@given(labelled_pairs())
def test_json_round_trip_keeps_every_figure(pair: tuple[np.ndarray, np.ndarray]) -> None:
    r = AccuracyReport.from_arrays(*pair, TABLE)
    back = AccuracyReport.from_json(json.loads(json.dumps(r.to_json(), allow_nan=False)))
    np.testing.assert_array_equal(back.matrix, r.matrix)
    for name in ("overall_accuracy", "average_accuracy", "kappa", "macro_f1"):
        assert getattr(back, name) == pytest.approx(getattr(r, name), nan_ok=True)


