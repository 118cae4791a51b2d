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
