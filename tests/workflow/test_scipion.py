"""Scipion workflow JSON -> hpcem template: mapped classes, converted units, and what
cannot be mapped reported (never dropped silently)."""

from __future__ import annotations

import pytest

from hpcem.errors import DataFormatError, ValidationError
from hpcem.workflow.load import check
from hpcem.workflow.scipion import convert

# The shape of a Scipion 3 'Export' file (object.* keys, parameters, pointers ID.output,
# the older "ID.__attribute__output" form too), written for this test.
SCIPION = [
    {
        "object.className": "ProtImportMovies",
        "object.id": "2",
        "object.label": "import movies",
        "object.comment": "EMPIAR-10xxx",
        "runName": None,
        "runMode": 0,
        "filesPath": "/data/session1",
        "filesPattern": "*.tiff",
        "samplingRate": 0.83,
        "dosePerFrame": 1.2,
        "voltage": 300.0,
        "sphericalAberration": 2.7,
        "amplitudeContrast": 0.1,
        "magnification": 105000,
        "gainFile": None,
    },
    {
        "object.className": "ProtMotionCorr",
        "object.id": "40",
        "object.label": "motioncor2",
        "alignFrame0": 1,
        "patchX": 5,
        "patchY": 5,
        "useEst": True,
        "numberOfThreads": 4,
        "inputMovies": "2.outputMovies",
    },
    {
        "object.className": "ProtCTFFind",
        "object.id": "82",
        "object.label": "ctffind4",
        "lowRes": 0.05,
        "highRes": 0.35,
        "minDefocus": 0.5,
        "maxDefocus": 4.0,
        "windowSize": 256,
        "findPhaseShift": False,
        "inputMicrographs": "40.__attribute__outputMicrographs",
    },
    {
        "object.className": "ProtMonitorSummary",
        "object.id": "120",
        "object.label": "summary",
        "inputProtocols": ["2", "40", "82"],
    },
    {
        "object.className": "ProtRelionAutopickLoG",
        "object.id": "150",
        "object.label": "LoG",
        "minDiameter": 120,
        "maxDiameter": 160,
        "inputMicrographs": "40.outputMicrographs",
    },
    {
        "object.className": "XmippProtScreenParticles",
        "object.id": "170",
        "inputParticles": "160.outputParticles",
    },
    {
        "object.className": "ProtRelionExtractParticles",
        "object.id": "160",
        "object.label": "extract",
        "boxSize": 256,
        "doInvert": True,
        "inputCoordinates": "150.outputCoordinates",
        "ctfRelations": "82.outputCTF",
    },
    {
        "object.className": "ProtRelionClassify2D",
        "object.id": "180",
        "numberOfClasses": 20,
        "maskDiameterA": 180,
        "inputParticles": "170.outputParticles",
    },
]


def test_mapping_units_and_report(project):
    doc, report = convert(SCIPION)
    runs = {r["key"]: r for r in doc["runs"]}
    assert [runs[k]["protocol"] for k in ("2", "40", "82", "150", "160", "180")] == [
        "import.movies",
        "motion.align",
        "ctf.estimate",
        "relion.autopick_log",
        "particles.extract",
        "relion.class2d",
    ]
    imp = runs["2"]["params"]
    assert (
        imp["files"]["placeholder"] == "files_2" and "/data/session1/*.tiff" in imp["files"]["help"]
    )
    assert imp["pixel_size_A"]["default"] == 0.83
    assert imp["dose_per_frame_e_A2"]["default"] == 1.2
    assert runs["2"]["notes"] == "EMPIAR-10xxx"
    ctf = runs["82"]["params"]
    # µm -> Å, and digital frequency -> Å with the imported pixel size (0.83 / f).
    assert ctf["defocus_min_A"] == pytest.approx(5000.0)
    assert ctf["defocus_max_A"] == pytest.approx(40000.0)
    assert ctf["res_low_A"] == pytest.approx(0.83 / 0.05)
    assert ctf["res_high_A"] == pytest.approx(0.83 / 0.35)
    assert runs["82"]["inputs"] == {"micrographs": ["@40:micrographs"]}
    assert runs["150"]["params"] == {"diameter_min_A": 120.0, "diameter_max_A": 160.0}
    ext = runs["160"]
    assert ext["inputs"]["coordinates"] == ["@150:coordinates"]
    assert ext["inputs"]["ctfs"] == ["@82:ctfs"]
    assert ext["inputs"]["micrographs"] == ["@40:micrographs"]  # from the picking run
    # A run reading an unmapped one gets an input placeholder, and the report says so.
    assert runs["180"]["inputs"]["particles"] == ["${particles_180}"]
    text = "\n".join(report)
    assert "120 ProtMonitorSummary (summary): no hpcem equivalent" in text
    assert "170 XmippProtScreenParticles" in text
    assert "reads unmapped object 170" in text
    assert "parameters not carried over: patchY, useEst" in text
    # The converted template is a valid hpcem template once its placeholders are set.
    with pytest.raises(ValidationError, match="placeholder 'files_2' is not set"):
        check(doc, {}, project)
    wf = check(doc, {"files_2": "movies/*.tiff", "particles_180": "3:particles"}, project)
    assert [r.key for r in wf.runs][:3] == ["2", "40", "82"]


def test_not_a_scipion_workflow():
    with pytest.raises(DataFormatError):
        convert({"runs": []})
    with pytest.raises(DataFormatError, match="no hpcem equivalent"):
        convert([{"object.className": "ProtMonitorSummary", "object.id": "1"}])


# Units and counting as the plugins' forms declare them (checked in their source; see
# docs/reproducibility.md): pwem's ProtAlignMovies counts frames from 1 ("The first frame
# is 1"), Scipion 1.0's ProtMovieAlignment from 0, ProtRelionMotioncor has sumFrame0 (from
# 1) and no alignFrame0; cistem's and gctf's CTF forms take the defocus range and the
# resolution limits in Å, pwem's (grigoriefflab's ProtCTFFind) in µm and digital frequency;
# Xmipp's picking consensus -1 means "every input"; appion's DoG picker takes Å.
PLUGIN_FORMS = [
    {"object.className": "ProtImportMicrographs", "object.id": "1", "samplingRate": 1.0},
    {"object.className": "ProtImportMovies", "object.id": "2", "samplingRate": 1.0},
    {"object.className": "ProtMotionCorr", "object.id": "3", "alignFrame0": 3, "patchX": 1}
    | {"inputMovies": "2.outputMovies"},
    {"object.className": "XmippProtFlexAlign", "object.id": "4", "alignFrame0": 2}
    | {"inputMovies": "2.outputMovies"},
    {"object.className": "ProtMovieAlignment", "object.id": "5", "alignFrame0": 2}
    | {"inputMovies": "2.outputMovies"},
    {"object.className": "ProtRelionMotioncor", "object.id": "6", "sumFrame0": 2, "bfactor": 150}
    | {"inputMovies": "2.outputMovies"},
    {"object.className": "CistemProtCTFFind", "object.id": "7", "minDefocus": 5000.0}
    | {"maxDefocus": 50000.0, "lowRes": 30.0, "highRes": 5.0}
    | {"inputMicrographs": "1.outputMicrographs"},
    {"object.className": "ProtGctf", "object.id": "8", "minDefocus": 5000.0}
    | {"maxDefocus": 90000.0, "lowRes": 50.0, "highRes": 4.0}
    | {"inputMicrographs": "1.outputMicrographs"},
    {"object.className": "ProtCTFFind", "object.id": "9", "minDefocus": 0.25, "maxDefocus": 4.0}
    | {"inputMicrographs": "1.outputMicrographs"},
    {"object.className": "DogPickerProtPicking", "object.id": "10", "diameter": 140}
    | {"invert": True, "threshold": 0.5, "inputMicrographs": "1.outputMicrographs"},
    {"object.className": "XmippProtConsensusPicking", "object.id": "11", "consensus": -1}
    | {"consensusRadius": 10, "inputCoordinates": ["10.outputCoordinates"]},
]


def test_units_and_counting_of_each_plugin_form(project):
    doc, report = convert(PLUGIN_FORMS)
    params = {r["key"]: r["params"] for r in doc["runs"]}
    assert params["3"] == {"first_frame": 2, "patches": 0}  # frame 3 of 1.. is hpcem's 2
    assert params["4"] == {"first_frame": 1}
    assert params["5"] == {"first_frame": 2}  # already counted from 0
    assert params["6"] == {"first_frame": 1, "bfactor_px2": 150.0}
    assert params["7"] == {
        "defocus_min_A": 5000.0,
        "defocus_max_A": 50000.0,
        "res_low_A": 30.0,
        "res_high_A": 5.0,
    }
    assert params["8"]["defocus_max_A"] == 90000.0 and params["8"]["res_high_A"] == 4.0
    assert params["9"] == {"defocus_min_A": pytest.approx(2500.0), "defocus_max_A": 40000.0}
    assert params["10"] == {"diameter_A": 140.0, "invert": True}
    assert params["11"] == {"radius_px": 10.0, "min_agree": 0}
    assert "10 DogPickerProtPicking -> picking.dog: parameters not carried over: threshold" in (
        "\n".join(report)
    )
    values = {"files_1": "mics/*.mrc", "files_2": "movies/*.tiff"}
    check(doc, values, project)  # every converted value is in range for its protocol


def test_the_documented_table_lists_every_mapped_class():
    import re
    from pathlib import Path

    from hpcem.workflow.scipion import MAPPING

    doc = (Path(__file__).parents[2] / "docs" / "reproducibility.md").read_text()
    table = doc[doc.index("| Scipion class |") : doc.index("## Branches and diff")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        cells = row.split(" | ")
        for cls in re.findall(r"`(\w+)`", cells[0]):
            documented[cls] = cells[1].strip("` ")
    assert documented == {cls: m.protocol for cls, m in MAPPING.items()}
