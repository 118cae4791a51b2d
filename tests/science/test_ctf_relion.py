"""Both CTF estimators read back a CTF made by RELION 3.1 itself (outside reference).

``relion_ctf_toolbox --simulate`` writes RELION's own 2D CTF for given DefocusU/V/Angle
(a centred box x box image, rows = ky, columns = kx). White noise filtered by it is a
micrograph whose Thon rings follow RELION's conventions for U, V and the astigmatism
angle; ``ctf.estimate`` and ``ctf.fit2d`` must recover the values RELION was given. (The
CTF's overall sign does not matter to either: they fit CTF².)
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hpcem.command import run_command
from hpcem.ctf.estimate import estimate_ctf
from hpcem.ctf.fit2d import fit_ctf_2d
from hpcem.ctf.model import ctf_2d
from hpcem.io import read_image

RELION_CTF = shutil.which("relion_ctf_toolbox")
pytestmark = pytest.mark.skipif(
    RELION_CTF is None,
    reason="relion_ctf_toolbox (RELION 3.1, Debian package relion) is not installed",
)
BOX = 1024
PIXEL_A = 1.0


def relion_ctf(tmp_path, u: float, v: float, angle: float, phase: float = 0.0) -> np.ndarray:
    out = tmp_path / f"ctf_{u:.0f}_{v:.0f}_{angle:.0f}.mrc"
    run_command(
        [
            RELION_CTF,
            "--simulate", str(out),
            "--angpix", str(PIXEL_A),
            "--box", str(BOX),
            "--kV", "300", "--Cs", "2.7", "--Q0", "0.1",
            "--defU", str(u), "--defV", str(v), "--defAng", str(angle),
            "--phase_shift", str(phase),
        ],
        timeout_s=120,
    )  # fmt: skip
    return read_image(out).astype(np.float64)


def micrograph_through(ctf_centred: np.ndarray, seed: int) -> np.ndarray:
    """White noise filtered by a centred full-plane CTF, plus weaker white noise."""
    ctf_half = np.fft.ifftshift(ctf_centred)[:, : BOX // 2 + 1]
    rng = np.random.default_rng(seed)
    signal = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(BOX, BOX))) * ctf_half, s=(BOX, BOX))
    return (signal + 1.5 * signal.std() * rng.normal(size=signal.shape)).astype(np.float32)


def test_relion_ctf_is_our_model_up_to_its_sign(tmp_path):
    """RELION's simulated CTF equals hpcem.ctf.model.ctf_2d on the same grid (U, V and
    the angle in the same places), with the opposite overall sign (+A at k = 0)."""
    relion = relion_ctf(tmp_path, 16000.0, 12000.0, 30.0)
    ours = ctf_2d((BOX, BOX), PIXEL_A, 16000.0, 12000.0, 30.0, 300.0, 2.7, 0.1, centered=True)
    np.testing.assert_allclose(relion, -ours, atol=2e-5)


@pytest.mark.parametrize(("u", "v", "angle"), [(18000.0, 17000.0, 35.0), (11000.0, 10400.0, 130.0)])
def test_both_estimators_read_back_relions_ctf(tmp_path, u, v, angle):
    image = micrograph_through(relion_ctf(tmp_path, u, v, angle), seed=int(angle))
    for fit in (estimate_ctf(image, PIXEL_A), fit_ctf_2d(image, PIXEL_A)):
        assert fit["defocus_u"] == pytest.approx(u, rel=0.005)
        assert fit["defocus_v"] == pytest.approx(v, rel=0.005)
        assert abs((fit["defocus_angle"] - angle + 90.0) % 180.0 - 90.0) < 3.0


def test_fit2d_reads_back_relions_phase_shift(tmp_path):
    image = micrograph_through(relion_ctf(tmp_path, 9000.0, 8600.0, 70.0, phase=80.0), seed=9)
    fit = fit_ctf_2d(image, PIXEL_A, phase_shift=True)
    assert fit["phase_shift"] == pytest.approx(80.0, abs=5.0)
    assert fit["defocus_u"] == pytest.approx(9000.0, rel=0.01)
