"""How far two CTF estimates of one micrograph agree (``ctf.consensus``).

The CTF phase is ``γ(k, α) = χ(k, α) + arcsin A + φ`` with the wave aberration
``χ = π λ Δf(α) k² − ½ π Cs λ³ k⁴`` and ``Δf(α) = m + h cos 2(α − θ)``
(``m = (U + V)/2``, ``h = (U − V)/2``; EMX conventions, :mod:`hpcem.ctf.model`). For two
estimates with the same voltage and Cs the difference is

    Δγ(k, α) = π λ k² D(α) + δ,   D(α) = (m₁ − m₂) + b cos 2α + c sin 2α,

with ``b = h₁ cos 2θ₁ − h₂ cos 2θ₂``, ``c = h₁ sin 2θ₁ − h₂ sin 2θ₂`` and
``δ = (arcsin A₁ + φ₁) − (arcsin A₂ + φ₂)``. Over the azimuth, D ranges over
``[a − R, a + R]`` (``a = m₁ − m₂``, ``R = √(b² + c²)``), and Δγ is linear in D, so the
largest |Δγ| at frequency k is reached at one of those two ends. The **consensus
resolution** is ``1/k`` for the smallest k at which that largest |Δγ| reaches 90°: beyond
it, some direction of the two CTFs is out of phase by more than a quarter period (CTF
correction with one would flip the other's signs there). It is exact (closed form in
k², no sampling); ``inf`` when the offsets alone differ by 90° or more, 0 when the two
CTFs are identical.
"""

from __future__ import annotations

import math

import numpy as np

from hpcem.ctf.model import electron_wavelength_A
from hpcem.errors import ValidationError


def phase_offset_rad(amplitude_contrast, phase_shift_deg) -> np.ndarray:
    """The constant part of the CTF phase: arcsin A + φ (radians)."""
    return np.arcsin(np.asarray(amplitude_contrast, dtype=np.float64)) + np.radians(
        np.asarray(phase_shift_deg, dtype=np.float64)
    )


def consensus_resolution_A(
    ctf_a: dict,
    ctf_b: dict,
    voltage_kV: float,
    amplitude_contrast_a: float = 0.1,
    amplitude_contrast_b: float | None = None,
) -> np.ndarray:
    """Resolution (Å) at which CTFs ``a`` and ``b`` first differ by 90° in phase.

    ``ctf_a`` and ``ctf_b`` map ``defocus_u``, ``defocus_v`` (Å), ``defocus_angle`` (deg)
    and optionally ``phase_shift`` (deg) to numbers or equal-length arrays (one entry per
    micrograph). Both sets share ``voltage_kV`` and Cs (Cs cancels in the difference);
    amplitude contrasts may differ (``amplitude_contrast_b`` defaults to ``_a``).
    Returns float64 array: ``inf`` where they never agree, 0 where they are identical.
    """
    lam = electron_wavelength_A(voltage_kV)
    if amplitude_contrast_b is None:
        amplitude_contrast_b = amplitude_contrast_a

    def parts(ctf):
        u = np.asarray(ctf["defocus_u"], dtype=np.float64)
        v = np.asarray(ctf["defocus_v"], dtype=np.float64)
        theta = np.radians(np.asarray(ctf["defocus_angle"], dtype=np.float64))
        half = 0.5 * (u - v)
        phase = ctf.get("phase_shift", 0.0)
        return 0.5 * (u + v), half * np.cos(2 * theta), half * np.sin(2 * theta), phase

    m1, b1, c1, p1 = parts(ctf_a)
    m2, b2, c2, p2 = parts(ctf_b)
    a = m1 - m2
    r = np.hypot(b1 - b2, c1 - c2)
    delta = phase_offset_rad(amplitude_contrast_a, p1) - phase_offset_rad(amplitude_contrast_b, p2)
    a, r, delta = np.broadcast_arrays(a, r, delta)
    quarter = 0.5 * math.pi
    s_min = np.full(a.shape, np.inf)
    for end in (a + r, a - r):
        slope = math.pi * lam * end  # dΔγ/d(k²) along the azimuth where D = end
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (np.sign(slope) * quarter - delta) / slope
        s = np.where(slope != 0, s, np.inf)
        s_min = np.minimum(s_min, s)
    s_min = np.where(np.abs(delta) >= quarter, 0.0, s_min)
    with np.errstate(divide="ignore"):
        return np.where(np.isinf(s_min), 0.0, 1.0 / np.sqrt(s_min))


def check_same_optics(optics_a: dict, optics_b: dict, names=("first", "second")) -> list[str]:
    """Problems that make two CTF sets incomparable: several voltages or Cs within one
    set (CTF items carry no optics group), or different ones between the sets."""
    problems = []
    values = {}
    for name, optics in zip(names, (optics_a, optics_b)):
        for key, label in (("voltage_kV", "voltage"), ("spherical_aberration_mm", "Cs")):
            column = np.asarray(optics.get(key, []), dtype=np.float64)
            distinct = sorted({round(float(x), 4) for x in column})
            if len(distinct) != 1:
                problems.append(
                    f"{name} CTF set has {len(distinct)} {label} values {distinct}; "
                    "ctf.consensus needs one per set"
                )
            else:
                values[(name, key)] = distinct[0]
    for key, label, unit in (
        ("voltage_kV", "voltage", "kV"),
        ("spherical_aberration_mm", "Cs", "mm"),
    ):
        va, vb = values.get((names[0], key)), values.get((names[1], key))
        if va is not None and vb is not None and not math.isclose(va, vb, rel_tol=1e-4):
            problems.append(
                f"different optics: {label} {va:g} {unit} ({names[0]}) vs {vb:g} {unit} "
                f"({names[1]}); the CTFs of different microscopes cannot be compared"
            )
    return problems


def single_optics_value(optics: dict, key: str) -> float:
    """The one value of ``key`` in an optics table (ValidationError if not one)."""
    column = np.asarray(optics.get(key, []), dtype=np.float64)
    distinct = sorted({round(float(x), 6) for x in column})
    if len(distinct) != 1:
        raise ValidationError(f"optics table has {len(distinct)} values of {key}: {distinct}")
    return distinct[0]
