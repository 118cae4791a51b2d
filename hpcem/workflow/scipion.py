"""Import a Scipion workflow JSON (a list of protocol objects) as an hpcem template.

A Scipion workflow file (``Export`` in the project window, ``*.json.template``) is a list
of objects with ``"object.className"``, ``"object.id"``, ``"object.label"``, the
protocol's parameters and input pointers ``"ID.outputName"`` (older files write
``"ID.__attribute__outputName"``). Each class with an hpcem equivalent becomes a run
(:data:`MAPPING`); its parameters are converted where the meaning is the same (units
changed: Scipion's defocus in µm, resolution limits as digital frequency). What cannot be
mapped is *reported*, never dropped silently: classes without an equivalent, parameters
not carried over, and inputs read from an unmapped run (these become input placeholders
to set on import). Import file patterns become placeholders too: a Scipion path names
the other site's disk.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

from hpcem.errors import DataFormatError

#: Scipion parameters every protocol has: nothing to carry over.
GENERIC = {
    "runName",
    "runMode",
    "hostName",
    "numberOfThreads",
    "numberOfMpi",
    "useQueue",
    "queueParams",
    "recalculate",
    "sqliteFile",
    "streamingSleepOnWait",
    "streamingBatchSize",
    "dataStreaming",
    "timeout",
    "fileTimeout",
    "extraParams",
    "extraParams2",
    "doGPU",
    "GPUCore",
    "gpuList",
    "hasExpert",
    "expertLevel",
}


def _um_to_A(v):
    return float(v) * 1e4


def _one_based(v):
    """A frame number counted from 1 (Scipion's ProtAlignMovies, RELION) as hpcem's 0-based."""
    return max(int(v) - 1, 0)


def _patches(v):
    """MotionCor2's patches per side: 1 (or 0) is global alignment only, hpcem's 0."""
    return int(v) if int(v) > 1 else 0


def _all_if_negative(v):
    """Xmipp's picking consensus: -1 = picked by every input (hpcem's min_agree 0)."""
    return max(0, int(v))


@dataclasses.dataclass(frozen=True)
class Mapping_:
    """How one Scipion class maps: the hpcem protocol, inputs and parameters
    (``scipion name -> (hpcem name, converter)``), and a remark shown on import."""

    protocol: str
    inputs: dict[str, str]
    params: dict[str, tuple[str, Callable[[Any], Any] | None]]
    remark: str = ""


# Parameter names and units were checked against the plugins' source (class, file,
# version: docs/reproducibility.md, "Scipion workflows"); pwem is scipion-em 3.11.0.
_IMPORT_PARAMS = {  # pwem protocol_import/base.py, images.py, micrographs.py
    "samplingRate": ("pixel_size_A", float),
    "voltage": ("voltage_kV", float),
    "sphericalAberration": ("spherical_aberration_mm", float),
    "amplitudeContrast": ("amplitude_contrast", float),
    "magnification": ("magnification", float),
}
#: pwem's ProtCTFMicrographs form (XmippProtCTFMicrographs, grigoriefflab's ProtCTFFind):
#: defocus range in µm, resolution limits as digital frequency (0-0.5).
_CTF_PARAMS = {
    "minDefocus": ("defocus_min_A", _um_to_A),
    "maxDefocus": ("defocus_max_A", _um_to_A),
    "windowSize": ("tile_size_px", int),
    "lowRes": ("res_low_A", "freq"),
    "highRes": ("res_high_A", "freq"),
}
#: cistem's and gctf's own forms (CistemProtCTFFind, ProtGctf): defocus and resolution in Å.
_CTF_PARAMS_A = {
    "minDefocus": ("defocus_min_A", float),
    "maxDefocus": ("defocus_max_A", float),
    "windowSize": ("tile_size_px", int),
    "lowRes": ("res_low_A", "freq"),
    "highRes": ("res_high_A", "freq"),
}
_MOTION = Mapping_(  # pwem ProtAlignMovies: alignFrame0 counts from 1
    "motion.align",
    {"inputMovies": "movies"},
    {"alignFrame0": ("first_frame", _one_based)},
    "hpcem's own global/patch alignment",
)
_EXTRACT = Mapping_(
    "particles.extract",
    {"inputCoordinates": "coordinates", "ctfRelations": "ctfs", "inputMicrographs": "micrographs"},
    {
        "boxSize": ("box_size_px", int),
        "doInvert": ("invert_contrast", bool),
        "doNormalize": ("normalize", bool),
        "doFlip": ("phase_flip", bool),
    },
)
_PICK = {"inputMicrographs": "micrographs"}

#: Scipion class name -> hpcem protocol. Class and parameter names are those of the
#: Scipion plugins (pwem, scipion-em-xmipp, -relion, -motioncorr, -cistem/grigoriefflab,
#: -sphire, -eman2).
MAPPING: dict[str, Mapping_] = {
    "ProtImportMovies": Mapping_(
        "import.movies", {}, {**_IMPORT_PARAMS, "dosePerFrame": ("dose_per_frame_e_A2", float)}
    ),
    "ProtImportMicrographs": Mapping_("import.micrographs", {}, dict(_IMPORT_PARAMS)),
    "ProtImportVolumes": Mapping_("import.volumes", {}, {"samplingRate": ("pixel_size_A", float)}),
    # Scipion 1.0's xmipp3 optical-flow alignment: alignFrame0 counts from 0
    "ProtMovieAlignment": Mapping_(
        "motion.align",
        {"inputMovies": "movies"},
        {"alignFrame0": ("first_frame", int)},
        "hpcem's own global/patch alignment",
    ),
    "XmippProtMovieCorr": _MOTION,  # renamed XmippProtFlexAlign in xmipp3 (2022)
    "XmippProtFlexAlign": _MOTION,
    "ProtMotionCorr": Mapping_(
        "motion.align",
        {"inputMovies": "movies"},
        {"alignFrame0": ("first_frame", _one_based), "patchX": ("patches", _patches)},
        "hpcem's own global/patch alignment",
    ),
    "ProtRelionMotioncor": Mapping_(  # its form has no alignFrame0: sumFrame0 (from 1)
        "relion.motioncorr",
        {"inputMovies": "movies"},
        {
            "patchX": ("patches_x", int),
            "patchY": ("patches_y", int),
            "bfactor": ("bfactor_px2", float),
            "sumFrame0": ("first_frame", _one_based),
        },
    ),
    "ProtCTFFind": Mapping_(
        "ctf.estimate",
        {"inputMicrographs": "micrographs"},
        _CTF_PARAMS,
        "hpcem's CTF estimation (CTFFIND-like search)",
    ),
    "CistemProtCTFFind": Mapping_(
        "ctf.estimate",
        {"inputMicrographs": "micrographs"},
        _CTF_PARAMS_A,
        "hpcem's CTF estimation (CTFFIND-like search)",
    ),
    "ProtGctf": Mapping_("ctf.estimate", {"inputMicrographs": "micrographs"}, _CTF_PARAMS_A),
    "XmippProtCTFMicrographs": Mapping_(
        "ctf.fit2d", {"inputMicrographs": "micrographs"}, _CTF_PARAMS
    ),
    "XmippProtCTFConsensus": Mapping_(
        "ctf.consensus",
        {"inputCTF": "ctfs", "inputCTF2": "other_ctfs"},
        {"resolution": ("resolution_A", float)},
    ),
    "DogPickerProtPicking": Mapping_(  # scipion-em-appion's DoG picker
        "picking.dog",
        _PICK,
        {"diameter": ("diameter_A", float), "invert": ("invert", bool)},
        "hpcem's own DoG picker (its threshold is on another scale: not carried over)",
    ),
    "SphireProtCRYOLOPicking": Mapping_(
        "picking.dog",
        _PICK,
        {},
        "crYOLO (a trained network) has no hpcem equivalent: replaced by DoG picking",
    ),
    "EmanProtBoxing": Mapping_(
        "picking.dog", _PICK, {}, "EMAN boxer (interactive) replaced by DoG picking"
    ),
    "ProtRelionAutopickLoG": Mapping_(
        "relion.autopick_log",
        _PICK,
        {"minDiameter": ("diameter_min_A", float), "maxDiameter": ("diameter_max_A", float)},
    ),
    "XmippProtConsensusPicking": Mapping_(
        "picking.consensus",
        {"inputCoordinates": "coordinates"},
        {"consensusRadius": ("radius_px", float), "consensus": ("min_agree", _all_if_negative)},
    ),
    "ProtRelionExtractParticles": _EXTRACT,
    "XmippProtExtractParticles": _EXTRACT,
    "ProtRelionClassify2D": Mapping_(
        "relion.class2d",
        {"inputParticles": "particles"},
        {
            "numberOfClasses": ("classes", int),
            "numberOfIterations": ("iterations", int),
            "maskDiameterA": ("particle_diameter_A", float),
        },
    ),
    "ProtRelionReconstruct": Mapping_(
        "relion.reconstruct",
        {"inputParticles": "particles"},
        {"symmetryGroup": ("symmetry", str)},
    ),
    "XmippProtReconstructFourier": Mapping_(
        "reconstruct.fourier",
        {"inputParticles": "particles"},
        {"symmetryGroup": ("symmetry", str)},
    ),
    "ProtRelionPostprocess": Mapping_(
        "relion.postprocess", {"protRefine": "volumes", "inputVolume": "volumes"}, {}
    ),
}

#: Scipion output attribute -> the set type it holds (to choose the hpcem output).
OUTPUT_TYPES = {
    "outputMovies": "hpcem.SetOfMovies",
    "outputMicrographs": "hpcem.SetOfMicrographs",
    "outputMicrographsDoseWeighted": "hpcem.SetOfMicrographs",
    "outputCTF": "hpcem.SetOfCTFs",
    "outputCoordinates": "hpcem.SetOfCoordinates",
    "outputParticles": "hpcem.SetOfParticles",
    "outputVolume": "hpcem.SetOfVolumes",
    "outputVolumes": "hpcem.SetOfVolumes",
    "outputClasses": "hpcem.SetOfClasses2D",
}

_POINTER = re.compile(r"^(\d+)\.(?:__attribute__)?([A-Za-z_][A-Za-z0-9_]*)$")


def _pointers(value: Any) -> list[tuple[str, str]]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        m = _POINTER.match(str(v)) if isinstance(v, (str, int)) else None
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def convert(doc: Any) -> tuple[dict, list[str]]:
    """(an hpcem template document, the report of what was not mapped or was changed)."""
    from hpcem.protocol.registry import get_protocol
    from hpcem.workflow.template import FORMAT, SCHEMA_VERSION

    if not isinstance(doc, list) or not all(isinstance(o, dict) for o in doc):
        raise DataFormatError("a Scipion workflow is a JSON list of protocol objects")
    report: list[str] = []
    mapped: dict[str, tuple[Mapping_, dict]] = {}
    for obj in doc:
        cls = str(obj.get("object.className", ""))
        oid = str(obj.get("object.id", ""))
        label = str(obj.get("object.label", "") or cls)
        if not re.fullmatch(r"\d+", oid):
            report.append(f"object without a numeric object.id ({cls}): skipped")
            continue
        if cls in MAPPING:
            mapped[oid] = (MAPPING[cls], obj)
        else:
            report.append(f"{oid} {cls} ({label}): no hpcem equivalent, not imported")
    sampling: dict[str, float] = {}
    runs, placeholders = [], {}
    for oid in sorted(mapped, key=int):
        m, obj = mapped[oid]
        protocol = get_protocol(m.protocol)
        label = str(obj.get("object.label", "") or obj.get("object.className"))
        where = f"{oid} {obj['object.className']} -> {m.protocol}"
        if m.remark:
            report.append(f"{where}: {m.remark}")
        inputs: dict[str, list[str]] = {}
        for sname, value in obj.items():
            if sname not in m.inputs:
                continue
            for src, attr in _pointers(value):
                iname = m.inputs[sname]
                if src in mapped:
                    src_proto = get_protocol(mapped[src][0].protocol)
                    want = OUTPUT_TYPES.get(attr)
                    outs = [o.name for o in src_proto.outputs if o.type == want]
                    if not outs:
                        report.append(f"{where}: input {sname}={value!r}: no matching output")
                        continue
                    inputs.setdefault(iname, []).append(f"@{src}:{outs[0]}")
                    if src in sampling:
                        sampling.setdefault(oid, sampling[src])
                else:
                    name = f"{iname}_{oid}"
                    placeholders[name] = {
                        "kind": "input",
                        "help": f"{label}: {sname} came from Scipion object {src}, which was "
                        "not imported; give a RUN:OUTPUT of the target project",
                    }
                    inputs.setdefault(iname, []).append("${" + name + "}")
                    report.append(
                        f"{where}: input {sname} reads unmapped object {src}: placeholder {name!r}"
                    )
        if m.protocol == "particles.extract" and "micrographs" not in inputs:
            _micrographs_from_coordinates(inputs, runs)
        params: dict[str, Any] = {}
        skipped = []
        for sname, value in obj.items():
            if sname.startswith("object.") or sname in GENERIC or sname in m.inputs:
                continue
            if sname not in m.params:
                if value not in (None, "", False):
                    skipped.append(sname)
                continue
            hname, conv = m.params[sname]
            if value is None:
                continue
            if conv == "freq":
                value = _freq_to_A(value, sampling.get(oid))
                if value is None:
                    skipped.append(sname)
                    continue
            elif conv is not None:
                value = conv(value)
            params[hname] = value
        if m.protocol.startswith("import."):
            if obj.get("samplingRate"):
                sampling[oid] = float(obj["samplingRate"])
            pattern = os.path.join(
                str(obj.get("filesPath") or ""), str(obj.get("filesPattern") or "")
            )
            params["files"] = {
                "placeholder": f"files_{oid}",
                "help": f"{label}: file pattern (was {pattern!r} in the Scipion project)",
            }
            for pname in ("pixel_size_A", "dose_per_frame_e_A2"):
                if pname in params:
                    params[pname] = {"placeholder": f"{pname}_{oid}", "default": params[pname]}
        if skipped:
            report.append(f"{where}: parameters not carried over: {', '.join(sorted(skipped))}")
        runs.append(
            {
                "key": oid,
                "protocol": m.protocol,
                "protocol_version": str(protocol.version),
                "label": label[:200],
                "notes": str(obj.get("object.comment", "") or "")[:20000],
                "params": params,
                "inputs": inputs,
            }
        )
    if not runs:
        raise DataFormatError(
            "nothing in the Scipion workflow has an hpcem equivalent: " + "; ".join(report)
        )
    out = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": "imported from Scipion",
        "source": {"scipion_objects": [str(o.get("object.id", "")) for o in doc]},
    }
    if placeholders:
        out["placeholders"] = placeholders
    out["runs"] = runs
    return out, report


def _freq_to_A(value: Any, sampling_A: float | None) -> float | None:
    """A Scipion resolution limit in Å: values <= 0.5 are digital frequency (older CTF
    forms), converted with the pixel size when known; larger values are already Å."""
    v = float(value)
    if v > 0.5:
        return v
    if v <= 0 or not sampling_A:
        return None
    return sampling_A / v


def _micrographs_from_coordinates(inputs: dict, runs: list[dict]) -> None:
    """Scipion's extraction takes its micrographs from the coordinates; hpcem's needs
    them named: the micrographs the picking run read."""
    by_key = {r["key"]: r for r in runs}
    for ref in inputs.get("coordinates", []):
        if not ref.startswith("@"):
            continue
        src = by_key.get(ref[1:].rsplit(":", 1)[0])
        seen = set()
        while src is not None and src["key"] not in seen:
            seen.add(src["key"])
            mics = src["inputs"].get("micrographs")
            if mics:
                inputs["micrographs"] = list(mics)
                return
            nxt = (src["inputs"].get("coordinates") or [""])[0]
            src = by_key.get(nxt[1:].rsplit(":", 1)[0]) if nxt.startswith("@") else None


def mapping_table() -> list[tuple[str, str, str]]:
    """(Scipion class, hpcem protocol, remark) rows for the documentation."""
    return [(cls, m.protocol, m.remark) for cls, m in sorted(MAPPING.items())]


__all__ = ["MAPPING", "convert", "mapping_table"]
