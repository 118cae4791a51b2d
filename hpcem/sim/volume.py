"""Volumes to project: an MRC map, or an atomic model turned into a density.

Atomic models (PDB or mmCIF, optionally ``.gz``/``.bz2``) are read with gemmi and turned
into a Coulomb-potential density with gemmi's electron scattering factors: each atom is
a sum of five gaussians (Peng et al. 1996, International Tables for Crystallography
Vol. C, table 4.3.2.2) blurred by its B-factor plus ``blur_A2`` (by default enough that
the density is band-limited at the pixel size, so that sampling it does not alias).
Waters are dropped; hydrogens are kept when the model has them.

A :class:`Volume` is cubic, indexed ``[z, y, x]``, with the particle's centre at voxel
``N // 2`` on each axis (the RELION/EMX box centre) and values scaled so that the
projection along z peaks at 1 (the scale the simulator's ``ice_level`` refers to).
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage

from hpcem.errors import DataFormatError, ValidationError

#: The model shipped with hpcem (human ACE2 with a pangolin-coronavirus RBD, PDB 7DDO,
#: cryo-EM, about 130 Å across); see hpcem/sim/data/README.md.
SHIPPED_MODEL = "7ddo.pdb.bz2"
_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
_MAP_SUFFIXES = (".mrc", ".map", ".mrcs", ".ccp4")
#: Padding around the particle inside its box, in pixels on each side.
BOX_MARGIN_PX = 4


class Volume:
    """A cubic density ``data`` (N, N, N) [z, y, x] at ``pixel_size_A``, centred at
    ``N // 2``, and the diameter of the particle in it (twice its largest radius)."""

    def __init__(self, data: np.ndarray, pixel_size_A: float, diameter_A: float, source: str):
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise ValidationError(f"{source}: a volume must be a cube, got shape {data.shape}")
        if not pixel_size_A > 0:
            raise ValidationError(f"{source}: pixel size must be > 0 Å, got {pixel_size_A}")
        self.data = data
        self.pixel_size_A = float(pixel_size_A)
        self.diameter_A = float(diameter_A)
        self.source = source
        self._projector = None

    @property
    def box_px(self) -> int:
        return int(self.data.shape[0])

    def projector(self):
        """The :class:`hpcem.sim.projection.Projector` of this volume (built once)."""
        if self._projector is None:
            from hpcem.sim.projection import Projector

            self._projector = Projector(self)
        return self._projector

    def describe(self) -> dict:
        """What the ground truth records about the volume."""
        return {
            "source": self.source,
            "box_px": self.box_px,
            "pixel_size_A": self.pixel_size_A,
            "diameter_A": round(self.diameter_A, 3),
        }


def shipped_model_path() -> Path:
    """Path of the atomic model shipped with hpcem (see :data:`SHIPPED_MODEL`)."""
    path = Path(str(resources.files("hpcem.sim") / "data" / SHIPPED_MODEL))
    if not path.is_file():
        raise DataFormatError(f"{path}: the shipped model is missing from this installation")
    return path


def _strip_compression(name: str) -> tuple[str, str]:
    lower = name.lower()
    for ext in (".gz", ".bz2"):
        if lower.endswith(ext):
            return lower[: -len(ext)], ext
    return lower, ""


def is_atomic_model(path: str | os.PathLike) -> bool:
    """True for PDB/mmCIF names (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, maybe
    ``.gz``/``.bz2``), False for MRC maps; DataFormatError otherwise."""
    base, _ = _strip_compression(Path(path).name)
    if base.endswith(_MODEL_SUFFIXES):
        return True
    if base.endswith(_MAP_SUFFIXES):
        return False
    raise DataFormatError(
        f"{path}: not a known volume format (maps: .mrc/.map; models: .pdb/.cif, "
        "optionally .gz or .bz2)"
    )


def read_structure(path: str | os.PathLike):
    """A gemmi Structure from a PDB or mmCIF file, plain, ``.gz`` or ``.bz2``."""
    try:
        import gemmi
    except ImportError:
        raise ValidationError(
            "reading atomic models needs gemmi (pip install gemmi); MRC maps do not"
        ) from None
    path = Path(path)
    base, compression = _strip_compression(path.name)
    opener = {"": open, ".gz": gzip.open, ".bz2": bz2.open}[compression]
    try:
        with opener(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        if base.endswith((".cif", ".mmcif")):
            structure = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
        else:
            structure = gemmi.read_pdb_string(text)
    except (OSError, EOFError, ValueError, RuntimeError) as exc:
        raise DataFormatError(f"{path}: cannot read the atomic model: {exc}") from None
    if len(structure) == 0 or not any(True for _ in structure[0].all()):
        raise DataFormatError(f"{path}: the atomic model has no atoms")
    structure.remove_waters()
    return structure


def alias_free_blur_A2(pixel_size_A: float) -> float:
    """B-factor (Å²) that brings a point's amplitude to 10 % at the Nyquist frequency:
    ``exp(−B k²/4) = 0.1`` at ``k = 1/(2 px)``, so sampling at ``px`` barely aliases."""
    return 4.0 * math.log(10.0) * (2.0 * pixel_size_A) ** 2


def volume_from_model(
    path: str | os.PathLike,
    pixel_size_A: float,
    box_px: int | None = None,
    blur_A2: float | None = None,
) -> Volume:
    """The density of an atomic model at ``pixel_size_A``, centred on the atoms' mean
    position, in a cubic box (default: the particle plus :data:`BOX_MARGIN_PX`, even).

    ``blur_A2`` is added to every atom's B-factor (default :func:`alias_free_blur_A2`).
    """
    import gemmi

    if not pixel_size_A > 0:
        raise ValidationError(f"pixel size must be > 0 Å, got {pixel_size_A}")
    structure = read_structure(path)
    model = structure[0]
    xyz = np.array([atom.pos.tolist() for cra in model.all() for atom in [cra.atom]])
    centre = xyz.mean(axis=0)
    radius_A = float(np.max(np.linalg.norm(xyz - centre, axis=1))) + 2.0  # + an atom's radius
    diameter_A = 2.0 * radius_A
    box = _box_size(box_px, diameter_A, pixel_size_A, path)
    side_A = box * pixel_size_A
    # Move the atoms' centre to the box centre voxel N//2; the grid is one P1 unit cell.
    offset = np.full(3, (box // 2) * pixel_size_A) - centre
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*offset)))
    structure.cell = gemmi.UnitCell(side_A, side_A, side_A, 90, 90, 90)
    structure.spacegroup_hm = "P 1"
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2.0 * pixel_size_A
    calc.blur = alias_free_blur_A2(pixel_size_A) if blur_A2 is None else float(blur_A2)
    calc.grid.set_unit_cell(structure.cell)
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(box, box, box)
    calc.add_model_density_to_grid(model)
    data = np.array(calc.grid, copy=True).transpose(2, 1, 0)  # gemmi [x, y, z] -> [z, y, x]
    return Volume(_normalise(data), pixel_size_A, diameter_A, Path(path).name)


def _box_size(box_px: int | None, diameter_A: float, pixel_size_A: float, where) -> int:
    needed = math.ceil(diameter_A / pixel_size_A) + 2 * BOX_MARGIN_PX
    if box_px is None:
        return needed + needed % 2
    if box_px < math.ceil(diameter_A / pixel_size_A):
        raise ValidationError(
            f"{where}: a particle of {diameter_A:.0f} Å needs a box of at least "
            f"{math.ceil(diameter_A / pixel_size_A)} px at {pixel_size_A} Å/px, got {box_px}"
        )
    return int(box_px)


def _normalise(data: np.ndarray) -> np.ndarray:
    peak = float(np.max(data.sum(axis=0)))
    if not peak > 0:
        raise DataFormatError("the volume has no positive density to project")
    return (data / peak).astype(np.float32)


def _resample(data: np.ndarray, from_A: float, to_A: float, box: int) -> np.ndarray:
    """Resample a cube to another pixel size and box, keeping voxel ``N // 2`` at
    ``M // 2``; low-passed to the new Nyquist frequency first when coarsening."""
    n = data.shape[0]
    ratio = to_A / from_A
    if ratio > 1.0 + 1e-6:
        ft = scipy.fft.rfftn(data)
        k = [np.abs(np.fft.fftfreq(n))] * 2 + [np.fft.rfftfreq(n)]
        kz, ky, kx = np.meshgrid(*k, indexing="ij", sparse=True)
        ft[np.sqrt(kz * kz + ky * ky + kx * kx) > 0.5 / ratio] = 0
        data = scipy.fft.irfftn(ft, s=data.shape)
    index = n // 2 + (np.arange(box) - box // 2) * ratio
    grid = np.meshgrid(index, index, index, indexing="ij", sparse=False)
    return scipy.ndimage.map_coordinates(data, grid, order=3, mode="constant", cval=0.0)


def volume_from_map(
    path: str | os.PathLike,
    pixel_size_A: float,
    box_px: int | None = None,
    map_pixel_size_A: float | None = None,
    threshold: float = 0.05,
) -> Volume:
    """An MRC map resampled to ``pixel_size_A`` (cubic splines; Fourier low-pass first
    when coarsening), keeping its box centre. The particle's diameter is twice the
    largest distance from the centre of a voxel above ``threshold`` × the maximum.

    ``map_pixel_size_A`` overrides the header's voxel size (needed when it is unset).
    """
    from hpcem.io.images import read_header
    from hpcem.io.mrc import read_mrc

    header = read_header(path)
    source_A = map_pixel_size_A or header.pixel_size_A
    if not source_A:
        raise ValidationError(f"{path}: the map has no voxel size; give map_pixel_size_A")
    data = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise DataFormatError(f"{path}: expected a cubic 3D map, got shape {data.shape}")
    data = np.nan_to_num(data.astype(np.float64))
    n = data.shape[0]
    above = np.argwhere(data > threshold * data.max())
    radius_px = float(np.max(np.linalg.norm(above - n // 2, axis=1))) if len(above) else n / 2
    diameter_A = 2.0 * radius_px * source_A
    box = _box_size(box_px, diameter_A, pixel_size_A, path)
    if box == n and abs(source_A - pixel_size_A) <= 1e-6 * pixel_size_A:
        out = data
    else:
        out = _resample(data, source_A, pixel_size_A, box)
    return Volume(_normalise(out), pixel_size_A, diameter_A, Path(path).name)


def load_volume(
    path: str | os.PathLike | None, pixel_size_A: float, box_px: int | None = None
) -> Volume:
    """A map or an atomic model (by its name), at ``pixel_size_A``; ``None`` loads the
    model shipped with hpcem."""
    path = shipped_model_path() if path is None else Path(path)
    if not path.is_file():
        raise ValidationError(f"{path}: no such file")
    if is_atomic_model(path):
        return volume_from_model(path, pixel_size_A, box_px)
    return volume_from_map(path, pixel_size_A, box_px)
