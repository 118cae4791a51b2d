"""CTFFIND4 output: the real CTFFIND 4.1.14 summary of ASPIRE's test image (9982.5 Å),
RELION's own parsing rule (``CtffindRunner::getCtffind4Results``, written here) applied
to the files we write, round trips, CTFFIND 5's extra columns, ``_avrot.txt``, bad input.

Round-trip tolerance: the writer prints CTFFIND's ``%.6f``: defocus, angle, score and
resolution come back to 1e-6, the phase shift (radians in the file) to 6e-5°.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from hpcem.convert.ctffind import read_ctffind_avrot, read_ctffind_txt, write_ctffind_txt
from hpcem.errors import DataFormatError, ValidationError

ASPIRE = "aspire-github/ctffind4_diagnostic_output.txt"


def relion_parse_ctffind(path):
    """RELION 3.1's getCtffind4Results, word for word: the optics from fixed word positions
    of the 'acceleration voltage:' line, the fit from the line after 'Columns: '."""
    out = {}
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if "acceleration voltage:" in line:
            words = line.split()
            assert len(words) >= 19
            out["Cs"], out["HT"] = float(words[13]), float(words[8])
            out["AmpCnst"], out["DStep"] = float(words[18]), float(words[3])
        elif "Columns: " in line:
            words = lines[i + 1].split()
            assert len(words) >= 7
            out["defU"], out["defV"], out["defAng"] = map(float, words[1:4])
            out["phaseshift"] = np.degrees(float(words[4]))
            out["CC"] = float(words[5])
            out["maxres"] = 999.0 if words[6] == "inf" else float(words[6])
    return out


def test_real_ctffind_output(shared_data):
    path = shared_data / ASPIRE
    table = np.loadtxt(path, ndmin=2)  # an outside reader of the same numbers
    conv = read_ctffind_txt(path, micrograph_id=5)
    cols = conv.columns
    assert conv.set_type == "hpcem.SetOfCTFs" and len(conv) == 1
    assert cols["defocus_u"][0] == pytest.approx(9982.5, abs=0.01)
    np.testing.assert_array_equal(cols["defocus_u"], table[:, 1])
    np.testing.assert_array_equal(cols["defocus_v"], table[:, 2])
    np.testing.assert_array_equal(cols["defocus_angle"], table[:, 3])
    np.testing.assert_allclose(cols["phase_shift"], np.degrees(table[:, 4]))
    assert cols["phase_shift"][0] == pytest.approx(2.020, abs=1e-3)  # CTFFIND's log: 2.020°
    np.testing.assert_array_equal(cols["fit_score"], table[:, 5])
    np.testing.assert_array_equal(cols["fit_resolution"], table[:, 6])
    assert cols["micrograph_id"].tolist() == [5]
    assert cols["estimator"].tolist() == ["CTFFIND 4.1.14"]
    relion = relion_parse_ctffind(path)
    assert conv.optics["pixel_size_A"].tolist() == [relion["DStep"]] == [1.0]
    assert conv.optics["voltage_kV"].tolist() == [relion["HT"]] == [200.0]
    assert conv.optics["spherical_aberration_mm"].tolist() == [relion["Cs"]] == [2.26]
    assert conv.optics["amplitude_contrast"].tolist() == [relion["AmpCnst"]] == [0.07]
    assert conv.extra["input_file"] == "test_img.mrc"
    assert conv.extra["box_size_px"] == 1024.0


def test_written_file_read_by_relions_rule_and_round_trip(tmp_path):
    cols = {
        "defocus_u": np.array([15301.1, 21000.25]),
        "defocus_v": np.array([14916.4, 20500.0]),
        "defocus_angle": np.array([5.28, -47.5]),
        "phase_shift": np.array([0.0, 87.5]),
        "fit_score": np.array([0.2, 0.05]),
        "fit_resolution": np.array([3.4, np.inf]),
    }
    optics = {
        "pixel_size_A": np.array([1.31]),
        "voltage_kV": np.array([300.0]),
        "spherical_aberration_mm": np.array([2.7]),
        "amplitude_contrast": np.array([0.07]),
    }
    out = tmp_path / "mic_ctf.txt"
    write_ctffind_txt(out, cols, optics, input_file="mic.mrc")
    relion = relion_parse_ctffind(out)  # RELION reads the first row
    assert (relion["DStep"], relion["HT"], relion["Cs"], relion["AmpCnst"]) == (
        1.31,
        300.0,
        2.7,
        0.07,
    )
    assert (relion["defU"], relion["defV"], relion["defAng"]) == (15301.1, 14916.4, 5.28)
    assert relion["phaseshift"] == pytest.approx(0.0) and relion["CC"] == 0.2
    again = read_ctffind_txt(out)
    for key, values in cols.items():
        np.testing.assert_allclose(
            again.columns[key], values, atol=1e-6 if key != "phase_shift" else 6e-5
        )
    assert again.extra["micrograph_number"].tolist() == [1, 2]
    assert np.isinf(again.columns["fit_resolution"][1])


def test_real_file_round_trip(shared_data, tmp_path):
    conv = read_ctffind_txt(shared_data / ASPIRE)
    write_ctffind_txt(
        tmp_path / "again.txt",
        conv.columns,
        conv.optics,
        input_file="test_img.mrc",
        box_size_px=1024,
    )
    original = (shared_data / ASPIRE).read_text().splitlines()
    written = (tmp_path / "again.txt").read_text().splitlines()
    assert written[-1] == original[-1]  # the data row, character for character
    assert written[2] == original[2]  # the optics line
    again = read_ctffind_txt(tmp_path / "again.txt")
    for key in (
        "defocus_u",
        "defocus_v",
        "defocus_angle",
        "phase_shift",
        "fit_score",
        "fit_resolution",
    ):
        np.testing.assert_array_equal(again.columns[key], conv.columns[key])


def test_ctffind5_extra_columns(tmp_path):
    path = tmp_path / "ctffind5.txt"
    path.write_text(
        "# Output from CTFFind version 5.0.2, run on 2024-05-01\n"
        "# Pixel size: 0.830 Angstroms ; acceleration voltage: 300.0 keV ; spherical "
        "aberration: 2.70 mm ; amplitude contrast: 0.07\n"
        "1.000000 12000.0 11000.0 45.0 0.0 0.31 3.5 85.0 12.5 950.0\n"
        "2.000000 13000.0 12500.0 -10.0 0.0 0.28 4.0 80.0 10.0 1010.0\n"
    )
    conv = read_ctffind_txt(path)
    assert conv.columns["defocus_u"].tolist() == [12000.0, 13000.0]
    assert conv.extra["tilt_axis_angle_deg"].tolist() == [85.0, 80.0]
    assert conv.extra["sample_thickness_A"].tolist() == [950.0, 1010.0]
    assert conv.columns["estimator"][0] == "CTFFIND 5.0.2"
    assert conv.columns["micrograph_id"].tolist() == [-1, -1]
    with pytest.raises(ValidationError, match="one micrograph"):
        read_ctffind_txt(path, micrograph_id=3)


def _avrot_text(unit="1/Angstroms"):
    header = [
        "# Output from CTFFind version 4.1.14, run on 2023-02-02 15:13:07",
        "# Input file: stack.mrcs ; Number of micrographs: 2",
        (
            "# Pixel size: 2.000 Angstroms ; acceleration voltage: 300.0 keV ; spherical "
            "aberration: 2.70 mm ; amplitude contrast: 0.07"
        ),
        "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms",
        (
            f"# 6 lines per micrograph: #1 - spatial frequency ({unit}); #2 - 1D rotational "
            "average of spectrum (assuming no astigmatism); #3 - 1D rotational average of "
            "spectrum; #4 - CTF fit; #5 - cross-correlation between spectrum and CTF fit; "
            "#6 - 2sigma of expected cross correlation of noise"
        ),
    ]
    rows = []
    for mic in range(2):
        for line in range(6):
            rows.append(" ".join(f"{mic * 100 + line * 10 + k:.6f}" for k in range(5)))
    return "\n".join(header + rows) + "\n"


def test_avrot(tmp_path):
    path = tmp_path / "stack_avrot.txt"
    path.write_text(_avrot_text())
    avrot = read_ctffind_avrot(path)
    assert avrot["spatial_frequency"].shape == (2, 5)
    assert avrot["spatial_frequency"][1].tolist() == [100, 101, 102, 103, 104]
    assert avrot["ctf_fit"][0].tolist() == [30, 31, 32, 33, 34]
    assert avrot["two_sigma_noise_cc"][1].tolist() == [150, 151, 152, 153, 154]
    assert avrot["pixel_size_A"] == 2.0
    pixels = tmp_path / "pixels_avrot.txt"
    pixels.write_text(_avrot_text("1/pixels"))
    in_pixels = read_ctffind_avrot(pixels)
    np.testing.assert_allclose(in_pixels["spatial_frequency"], avrot["spatial_frequency"] / 2.0)


# --- bad input -----------------------------------------------------------------------------


def test_wrong_column_count_names_file_and_line(shared_data, tmp_path):
    text = (shared_data / ASPIRE).read_text().rstrip("\n")
    bad = tmp_path / "cut.txt"
    bad.write_text(text.rsplit(" ", 1)[0] + "\n")
    with pytest.raises(DataFormatError, match=r"cut\.txt, line 6: 6 columns"):
        read_ctffind_txt(bad)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text(text + "\n2.0 1 2 3 4 5 6 7\n")
    with pytest.raises(DataFormatError, match=r"ragged\.txt, line 7: 8 columns.* has 7"):
        read_ctffind_txt(ragged)
    word = tmp_path / "word.txt"
    word.write_text(text.replace("0.565683", "nope") + "\n")
    with pytest.raises(DataFormatError, match=r"word\.txt, line 6: 'nope' is not a number"):
        read_ctffind_txt(word)
    avrot = tmp_path / "short_avrot.txt"
    avrot.write_text("\n".join(_avrot_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataFormatError, match="6 per micrograph"):
        read_ctffind_avrot(avrot)


def test_writer_needs_one_set_of_optics(tmp_path):
    cols = {"defocus_u": np.array([1e4]), "defocus_v": np.array([1e4])}
    with pytest.raises(ValidationError, match="voltage_kV"):
        write_ctffind_txt(tmp_path / "x.txt", cols, {"pixel_size_A": np.array([1.0])})
    optics = {
        "pixel_size_A": np.array([1.0, 1.2]),
        "voltage_kV": np.array([300.0, 300.0]),
        "spherical_aberration_mm": np.array([2.7, 2.7]),
        "amplitude_contrast": np.array([0.1, 0.1]),
    }
    with pytest.raises(ValidationError, match="pixel_size_A"):
        write_ctffind_txt(tmp_path / "x.txt", cols, optics)


def test_ctfs_store_as_an_hpcem_set(shared_data, project):
    conv = read_ctffind_txt(shared_data / ASPIRE, micrograph_id=0)
    run = project.create_run("import.ctfs")
    with project.create_set(run.id, "ctfs", conv.set_type) as writer:
        writer.set_optics(conv.optics)
        writer.append_columns(conv.columns)
    stored = project.open_set(run.id, "ctfs")
    assert stored.column("defocus_u")[0] == pytest.approx(9982.5029)
    assert stored.column("estimator")[0] == "CTFFIND 4.1.14"


def test_micrograph_matched_by_input_file(shared_data):
    conv = read_ctffind_txt(shared_data / ASPIRE, micrograph_names={"Micrographs/test_img.mrc": 12})
    assert conv.columns["micrograph_id"].tolist() == [12]
    with pytest.raises(DataFormatError, match="micrograph 'test_img.mrc' is not in"):
        read_ctffind_txt(shared_data / ASPIRE, micrograph_names={"other.mrc": 1})


_MICS_STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
opticsGroup1 1 {apix} {kv} {cs} {ac}

# version 30001

data_micrographs

loop_
_rlnMicrographName #1
_rlnOpticsGroup #2
{names}
"""


@pytest.mark.skipif(
    shutil.which("relion_run_ctffind") is None, reason="relion_run_ctffind not on PATH"
)
def test_relion_run_ctffind_reads_our_files(shared_data, tmp_path):
    """RELION's own CTFFIND import (``relion_run_ctffind --only_make_star``, which parses
    existing CTFFIND4 results) on a file we wrote and on the real CTFFIND 4.1.14 file
    (copied next to it): its micrographs_ctf.star holds our values."""
    import starfile

    from hpcem.command import run_command

    (tmp_path / "Movies").mkdir()
    (tmp_path / "CtfFind" / "Movies").mkdir(parents=True)
    ours = {
        "defocus_u": np.array([15301.1]),
        "defocus_v": np.array([14916.4]),
        "defocus_angle": np.array([5.28]),
        "phase_shift": np.array([12.5]),
        "fit_score": np.array([0.2]),
        "fit_resolution": np.array([3.4]),
    }
    optics = {
        "pixel_size_A": [1.0],
        "voltage_kV": [200.0],
        "spherical_aberration_mm": [2.26],
        "amplitude_contrast": [0.07],
    }
    write_ctffind_txt(tmp_path / "CtfFind/Movies/ours.txt", ours, optics, input_file="ours.mrc")
    real = (shared_data / ASPIRE).read_text()
    (tmp_path / "CtfFind/Movies/real.txt").write_text(real)
    for name in ("ours", "real"):
        (tmp_path / f"Movies/{name}.mrc").write_bytes(b"")  # only the name is used
        (tmp_path / f"CtfFind/Movies/{name}_ctffind4.log").write_text(
            f"Summary of results                          : CtfFind/Movies/{name}.txt\n"
        )
    (tmp_path / "mics.star").write_text(
        _MICS_STAR.format(
            apix=1.0, kv=200, cs=2.26, ac=0.07, names="Movies/ours.mrc 1\nMovies/real.mrc 1"
        )
    )
    argv = ["relion_run_ctffind", "--i", "mics.star", "--o", "CtfFind/", "--ctffind_exe"]
    argv += ["/bin/true", "--is_ctffind4", "--only_make_star", "--do_phaseshift"]
    run_command(argv, cwd=tmp_path, timeout_s=120)
    table = starfile.read(tmp_path / "CtfFind/micrographs_ctf.star", always_dict=True)[
        "micrographs"
    ]
    table = table.set_index("rlnMicrographName")
    mine = table.loc["Movies/ours.mrc"]
    assert mine["rlnDefocusU"] == pytest.approx(15301.1, abs=1e-3)
    assert mine["rlnDefocusV"] == pytest.approx(14916.4, abs=1e-3)
    assert mine["rlnDefocusAngle"] == pytest.approx(5.28, abs=1e-6)
    assert mine["rlnPhaseShift"] == pytest.approx(12.5, abs=1e-4)
    assert mine["rlnCtfFigureOfMerit"] == pytest.approx(0.2)
    assert mine["rlnCtfMaxResolution"] == pytest.approx(3.4)
    conv = read_ctffind_txt(shared_data / ASPIRE)
    theirs = table.loc["Movies/real.mrc"]
    assert theirs["rlnDefocusU"] == pytest.approx(conv.columns["defocus_u"][0], abs=1e-3)
    assert theirs["rlnDefocusAngle"] == pytest.approx(conv.columns["defocus_angle"][0], abs=1e-6)
    assert theirs["rlnPhaseShift"] == pytest.approx(conv.columns["phase_shift"][0], abs=1e-4)
    assert theirs["rlnCtfMaxResolution"] == pytest.approx(conv.columns["fit_resolution"][0])
