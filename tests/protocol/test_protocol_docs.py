"""Every built-in protocol has its page in docs/protocols/, with a picture the project made.

The page of ``group.action`` is ``docs/protocols/group_action.md``. It must name the
protocol, show every parameter, input and output name and every citation key of the
declaration (as code, e.g. `pixel_size_A`), and show at least one picture from
``docs/protocols/img/`` that is a real PNG larger than 100x100 px. A protocol added to
``hpcem.protocols`` without such a page fails here. Pictures: scripts/make_protocol_figures.py.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import pytest

from hpcem.protocol import Citation, Output, Param, Protocol
from hpcem.protocol.registry import BUILTIN_PACKAGE, registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocols"
IMG = DOCS / "img"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PICTURE_PX = 100
_PICTURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def documented_protocols() -> list[str]:
    """Names of the protocols that need a page: those of hpcem.protocols, not test plugins."""
    reg = registry()
    return [
        name
        for name in reg.names()
        if not name.startswith("test.")
        and reg.protocols[name].__module__.startswith(BUILTIN_PACKAGE + ".")
    ]


def page_path(name: str) -> Path:
    return DOCS / (name.replace(".", "_") + ".md")


def png_problem(path: Path) -> str | None:
    """Why ``path`` is not a PNG of more than MIN_PICTURE_PX in both directions, or None."""
    try:
        head = path.read_bytes()[:24]
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if len(head) < 24 or head[:8] != PNG_SIGNATURE:
        return f"{path}: not a PNG (no PNG signature)"
    if head[12:16] != b"IHDR":
        return f"{path}: corrupt PNG (first chunk is {head[12:16]!r}, not IHDR)"
    width, height = struct.unpack(">II", head[16:24])
    if width <= MIN_PICTURE_PX or height <= MIN_PICTURE_PX:
        return (
            f"{path}: picture of {width}x{height} px, want more than {MIN_PICTURE_PX} px each way"
        )
    return None


def page_problems(protocol: type[Protocol]) -> list[str]:
    """Everything the page of ``protocol`` lacks; empty when it is complete."""
    page = page_path(protocol.name)
    where = page.relative_to(DOCS.parents[1])
    if not page.is_file():
        return [f"{protocol.name}: no page {where} (see docs/protocols/README.md)"]
    text = page.read_text(encoding="utf-8")
    problems = []
    if f"`{protocol.name}`" not in text:
        problems.append(f"{where}: does not name the protocol `{protocol.name}`")
    for kind, names in (
        ("parameter", [p.name for p in protocol.params]),
        ("input", [i.name for i in protocol.inputs]),
        ("output", [o.name for o in protocol.outputs]),
        ("citation key", [c.key for c in protocol.citations]),
    ):
        problems += [f"{where}: does not show {kind} `{n}`" for n in names if f"`{n}`" not in text]
    pictures = [m for m in _PICTURE.findall(text) if m.lower().endswith(".png")]
    if not pictures:
        problems.append(f"{where}: shows no PNG picture (![caption](img/NAME.png))")
    for ref in pictures:
        target = (DOCS / ref).resolve()
        if target.parent != IMG.resolve():
            problems.append(f"{where}: picture {ref} is not in docs/protocols/img/")
        elif (problem := png_problem(target)) is not None:
            problems.append(f"{where}: picture {ref}: {problem}")
    return problems


def test_the_builtin_protocols_are_all_found():
    names = documented_protocols()
    assert {
        "import.micrographs",
        "import.movies",
        "import.volumes",
        "ctf.estimate",
        "particles.average_mpi",
    } <= set(names)
    broken = {k: v for k, v in registry().errors.items() if k.startswith(BUILTIN_PACKAGE)}
    assert broken == {}  # a module that fails to load would escape the page check


@pytest.mark.parametrize("name", documented_protocols())
def test_protocol_has_a_complete_page(name):
    assert page_problems(registry().get(name)) == []


def test_a_protocol_without_a_page_fails():
    class Undocumented(Protocol):
        name = "docs.undocumented_example"
        params = (Param.int("n", 1),)
        outputs = (Output("things", "hpcem.SetOfMicrographs"),)
        citations = (Citation("Nobody2026", "@misc{Nobody2026}"),)

    assert page_problems(Undocumented) == [
        (
            "docs.undocumented_example: no page docs/protocols/docs_undocumented_example.md"
            " (see docs/protocols/README.md)"
        ),
    ]


def test_page_problems_name_what_is_missing(tmp_path, monkeypatch):
    class Partial(Protocol):
        name = "docs.partial"
        params = (Param.float("pixel_size_A", 1.0),)
        outputs = (Output("things", "hpcem.SetOfMicrographs"),)
        citations = (Citation("Nobody2026", "@misc{Nobody2026}"),)

    docs = tmp_path / "docs" / "protocols"
    (docs / "img").mkdir(parents=True)
    (docs / "img" / "tiny.png").write_bytes(
        PNG_SIGNATURE
        + struct.pack(">I", 13)
        + b"IHDR"
        + struct.pack(">II", 50, 400)
        + b"\x08\x02\x00\x00\x00"
    )
    (docs / "docs_partial.md").write_text("# `docs.partial`\n`things`\n![x](img/tiny.png)\n")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "DOCS", docs)
    monkeypatch.setattr(module, "IMG", docs / "img")
    problems = page_problems(Partial)
    assert problems == [
        "docs/protocols/docs_partial.md: does not show parameter `pixel_size_A`",
        "docs/protocols/docs_partial.md: does not show citation key `Nobody2026`",
        (
            "docs/protocols/docs_partial.md: picture img/tiny.png: "
            f"{docs / 'img' / 'tiny.png'}: picture of 50x400 px, want more than 100 px each way"
        ),
    ]
