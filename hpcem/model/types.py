"""The item types of single-particle analysis, declared once.

Conventions (EMX-compatible; every rule with its test in docs/conventions.md): defocus
in Å, positive = underfocus; astigmatism angle in degrees from x to the U axis; Euler
angles ZYZ (rot, tilt, psi) in degrees, RELION's matrix; particle shifts in Å with RELION
3.1's ``_rlnOriginXAngst`` sign (particle centre = box centre − shift); movie frame shifts
in Å as the specimen's displacement (RELION stores the negative); coordinates = the box
centre in pixels of the micrograph, 0-based, x along columns (RELION's
``_rlnCoordinateX/Y``); pixel size in Å/px; dose in e⁻/Å².
Acquisition parameters live in a per-set ``optics`` table (like RELION 3.1) and items
carry an ``optics_group`` id that refers to it.
"""

from __future__ import annotations

from hpcem.model.fields import Field, ItemType


def _id() -> Field:
    return Field(
        "id", "int64", "", "item id, unique within its set (-1 = assign on append)", default=-1
    )


def _optics_group() -> Field:
    return Field(
        "optics_group", "int32", "", "optics group id (row of the set's optics table)", default=1
    )


def _path(name: str, doc: str) -> Field:
    return Field(name, "int32", "", doc, kind="path")


ACQUISITION = ItemType(
    "hpcem.Acquisition",
    "Acquisitions",
    (
        Field("optics_group", "int32", "", "optics group id", default=1),
        Field("name", "str", "", "optics group name", kind="str"),
        Field("voltage_kV", "float32", "kV", "acceleration voltage"),
        Field("spherical_aberration_mm", "float32", "mm", "spherical aberration Cs"),
        Field("amplitude_contrast", "float32", "", "amplitude contrast fraction (0..1)"),
        Field("pixel_size_A", "float32", "Å/px", "pixel size of the images"),
        Field("dose_per_frame_e_A2", "float32", "e⁻/Å²", "dose per movie frame"),
        Field("magnification", "float32", "", "nominal magnification"),
        Field(
            "image_size_px",
            "int32",
            "px",
            "edge of the particle boxes (sets of particles; 0 = not a particle set)",
            default=0,
        ),
    ),
    "Acquisition parameters of one optics group (one row of a set's optics table).",
)

MOVIE = ItemType(
    "hpcem.Movie",
    "Movies",
    (
        _id(),
        _path("image", "movie file (frames stack)"),
        Field("n_frames", "int32", "", "number of frames"),
        _optics_group(),
    ),
    "A dose-fractionated movie as written by the microscope.",
)

MICROGRAPH = ItemType(
    "hpcem.Micrograph",
    "Micrographs",
    (
        _id(),
        _path("image", "micrograph image file"),
        Field(
            "movie_id", "int64", "", "id of the movie it was aligned from (-1 = none)", default=-1
        ),
        _path("image_nodw", "sum of the aligned frames without dose weighting (optional)"),
        _path("thumbnail", "diagnostic picture (PNG) of the step that made it (optional)"),
        _optics_group(),
    ),
    "A micrograph (aligned, dose-weighted sum of a movie, or an image).",
)

CTF_MODEL = ItemType(
    "hpcem.CTFModel",
    "CTFs",
    (
        _id(),
        Field("micrograph_id", "int64", "", "id of the micrograph it was fitted on"),
        Field("defocus_u", "float32", "Å", "defocus along the major axis (positive = underfocus)"),
        Field("defocus_v", "float32", "Å", "defocus along the minor axis (positive = underfocus)"),
        Field("defocus_angle", "float32", "deg", "astigmatism angle (from x to the U axis)"),
        Field("phase_shift", "float32", "deg", "phase plate phase shift", default=0.0),
        Field("fit_resolution", "float32", "Å", "resolution up to which the fit holds"),
        Field("fit_score", "float32", "", "fit score (e.g. cross-correlation)"),
        _path("psd", "power spectrum image (optional)"),
        _path("thumbnail", "diagnostic picture (PNG): spectrum with the fitted model (optional)"),
        Field("estimator", "str", "", "method that made it (e.g. ctf.estimate)", kind="str"),
        Field(
            "consensus_resolution",
            "float32",
            "Å",
            "resolution at which it and the other estimate differ by 90° in phase (ctf.consensus)",
        ),
    ),
    "A contrast transfer function model fitted on one micrograph.",
)

COORDINATE = ItemType(
    "hpcem.Coordinate",
    "Coordinates",
    (
        _id(),
        Field("micrograph_id", "int64", "", "id of the micrograph"),
        Field("x", "float32", "px", "x position in pixels of the micrograph"),
        Field("y", "float32", "px", "y position in pixels of the micrograph"),
        Field("score", "float32", "", "picking score", default=0.0),
        Field(
            "n_agree",
            "int32",
            "",
            "number of pickers that found it (picking.consensus; 0 = one picker's pick)",
            default=0,
        ),
    ),
    "A picked particle position on a micrograph.",
)

PARTICLE = ItemType(
    "hpcem.Particle",
    "Particles",
    (
        _id(),
        _path("image", "particle stack file"),
        Field("image_index", "int32", "", "0-based index of the particle in its stack"),
        Field(
            "micrograph_id", "int64", "", "id of the micrograph it was extracted from", default=-1
        ),
        Field("coord_x", "float32", "px", "x of the particle centre on its micrograph"),
        Field("coord_y", "float32", "px", "y of the particle centre on its micrograph"),
        Field("coord_score", "float32", "", "picking score", default=0.0),
        Field("defocus_u", "float32", "Å", "defocus U (positive = underfocus)"),
        Field("defocus_v", "float32", "Å", "defocus V (positive = underfocus)"),
        Field("defocus_angle", "float32", "deg", "astigmatism angle"),
        Field("phase_shift", "float32", "deg", "phase plate phase shift", default=0.0),
        Field("ctf_fit_resolution", "float32", "Å", "CTF fit resolution of its micrograph"),
        Field("ctf_fit_score", "float32", "", "CTF fit score of its micrograph"),
        Field("rot", "float32", "deg", "first Euler angle (ZYZ)", default=0.0),
        Field("tilt", "float32", "deg", "second Euler angle (ZYZ)", default=0.0),
        Field("psi", "float32", "deg", "third Euler angle (ZYZ)", default=0.0),
        Field("shift_x", "float32", "Å", "in-plane x shift", default=0.0),
        Field("shift_y", "float32", "Å", "in-plane y shift", default=0.0),
        Field("class_id", "int32", "", "class the particle is assigned to (0 = none)"),
        Field("weight", "float32", "", "per-particle weight", default=1.0),
        Field("half_set", "int8", "", "gold-standard half (1 or 2; 0 = unassigned)"),
        Field(
            "pose_score",
            "float32",
            "",
            "score of its pose, higher is better (projection matching: correlation with the "
            "CTF-weighted projection over the projection's norm)",
            default=0.0,
        ),
        Field(
            "edge_padded",
            "int8",
            "",
            "1 = its box crossed the micrograph edge and the outside was filled (extraction)",
            default=0,
        ),
        _optics_group(),
    ),
    "A particle image with its CTF, position, orientation and class.",
)

#: The particle fields a reconstruction from known poses reads (hpcem's or RELION's): the
#: image, its pose, its CTF, its half set and its optics group.
RECONSTRUCTION_FIELDS = (
    "image",
    "image_index",
    "rot",
    "tilt",
    "psi",
    "shift_x",
    "shift_y",
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "phase_shift",
    "half_set",
    "optics_group",
)

VOLUME = ItemType(
    "hpcem.Volume",
    "Volumes",
    (
        _id(),
        _path("image", "volume file (MRC)"),
        Field("pixel_size_A", "float32", "Å/px", "voxel size"),
        Field("box_size", "int32", "px", "edge length of the cubic box"),
        Field("origin_x", "float32", "Å", "origin x", default=0.0),
        Field("origin_y", "float32", "Å", "origin y", default=0.0),
        Field("origin_z", "float32", "Å", "origin z", default=0.0),
        Field("half", "int8", "", "0 = full map, 1 or 2 = half map"),
        Field(
            "symmetry", "str", "", "point-group symmetry (e.g. C1, D2)", kind="str", default="C1"
        ),
    ),
    "A 3D map.",
)

MASK = ItemType(
    "hpcem.Mask",
    "Masks",
    (
        _id(),
        _path("image", "mask file (MRC, values 0..1)"),
        Field("pixel_size_A", "float32", "Å/px", "voxel size"),
        Field("box_size", "int32", "px", "edge length of the cubic box"),
        Field("dimensions", "int8", "", "2 or 3", default=3),
    ),
    "A 2D or 3D mask.",
)

CLASS_2D = ItemType(
    "hpcem.Class2D",
    "Classes2D",
    (
        _id(),
        _path("representative", "stack holding the class average"),
        Field("representative_index", "int32", "", "0-based index of the average in its stack"),
        Field("size", "int64", "", "number of member particles"),
        Field("member_ids", "int64", "", "ids of the member particles", kind="ragged"),
    ),
    "A 2D class: its average and the ids of its particles.",
)

CLASS_3D = ItemType(
    "hpcem.Class3D",
    "Classes3D",
    (
        _id(),
        _path("representative", "class volume file"),
        Field("size", "int64", "", "number of member particles"),
        Field("resolution_A", "float32", "Å", "estimated resolution of the class volume"),
        Field("member_ids", "int64", "", "ids of the member particles", kind="ragged"),
    ),
    "A 3D class: its volume and the ids of its particles.",
)

FSC = ItemType(
    "hpcem.FSC",
    "FSCs",
    (
        _id(),
        Field("label", "str", "", "what the curve compares", kind="str"),
        Field("resolution_A", "float32", "Å", "resolution at the FSC = 0.143 threshold"),
        Field("frequency", "float32", "1/Å", "spatial frequency of each shell", kind="ragged"),
        Field("fsc", "float32", "", "correlation of each shell", kind="ragged"),
    ),
    "A Fourier shell correlation curve.",
)

MOVIE_ALIGNMENT = ItemType(
    "hpcem.MovieAlignment",
    "MovieAlignments",
    (
        _id(),
        Field("movie_id", "int64", "", "id of the aligned movie"),
        Field("first_frame", "int32", "", "first frame used (0-based)"),
        Field("last_frame", "int32", "", "last frame used (0-based, inclusive)"),
        Field("shifts_x", "float32", "Å", "x shift of each frame", kind="ragged"),
        Field("shifts_y", "float32", "Å", "y shift of each frame", kind="ragged"),
        Field("total_drift", "float32", "Å", "path length of the frame trajectory"),
        Field("early_drift", "float32", "Å", "path length over the first frames (early motion)"),
        Field("local", "int8", "", "1 = local (patch) model refined on top of the global one"),
        Field(
            "local_coefficients",
            "float32",
            "px",
            "coefficients of the local motion model (layout in docs/protocols)",
            kind="ragged",
        ),
        _path("plot", "shift-trajectory picture (PNG)"),
    ),
    "Alignment of one movie: per-frame whole-frame shifts, drift and an optional local model.",
)

ALL_TYPES = (
    ACQUISITION,
    MOVIE,
    MICROGRAPH,
    CTF_MODEL,
    COORDINATE,
    PARTICLE,
    VOLUME,
    MASK,
    CLASS_2D,
    CLASS_3D,
    FSC,
    MOVIE_ALIGNMENT,
)

#: Item types by stable name (``"hpcem.Particle"``).
ITEM_TYPES: dict[str, ItemType] = {t.name: t for t in ALL_TYPES}

#: Item types by the stable name of their set (``"hpcem.SetOfParticles"``).
SET_TYPES: dict[str, ItemType] = {t.set_type: t for t in ALL_TYPES if t is not ACQUISITION}
