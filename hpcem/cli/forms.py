"""Command-line forms derived from protocol declarations.

``hpcem run PROJECT PROTOCOL`` is a group whose subcommands are the registered protocols;
each one's options (and ``--help``) come from the protocol's parameter declarations.
Values stay strings here: validation converts and checks them all at once.
"""

from __future__ import annotations

import click

from hpcem.protocol.declare import Protocol
from hpcem.protocol.params import BOOL_WORDS_TEXT


def option_names(param_name: str) -> list[str]:
    """``pixel_size_A`` is accepted as ``--pixel-size-A`` and ``--pixel_size_A``."""
    dashed = "--" + param_name.replace("_", "-")
    plain = "--" + param_name
    return [dashed] if dashed == plain else [dashed, plain]


def param_help(p) -> str:
    parts = [p.help or p.label or p.name]
    rng = p.describe_range()
    if rng:
        parts.append(f"[{rng}]" if not rng.startswith("[") else rng)
    if p.default is not None:
        parts.append(f"(default: {p.default})")
    if p.required:
        parts.append("(required)")
    if p.when:
        parts.append("(applies when " + " and ".join(str(c) for c in p.when) + ")")
    return " ".join(parts)


class BoolOption(click.Option):
    """A boolean parameter: ``--NAME`` (true), ``--no-NAME`` (false) or ``--NAME VALUE``
    with VALUE one of the words :func:`hpcem.protocol.params.Param.convert` accepts.

    The value stays a string ("true", "false" or what was given) so that validation
    converts it, and reports a bad word, together with every other parameter. When both
    forms are given, the last one wins, as with any click flag.
    """

    def __init__(self, names: list[str], name: str, negative: str, help: str) -> None:
        # An optional value: a bare --NAME (end of line, or another option next) is "true".
        super().__init__(
            [*names, name],
            is_flag=False,
            flag_value="true",
            default=None,
            metavar="[BOOL]",
            help=help,
        )
        self.negative = negative

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        # click has no public way to give an optional-value option a negative flag name;
        # its parser has taken (obj, opts, dest, action, const) since click 7.
        parser.add_option(
            obj=self, opts=[self.negative], dest=self.name, action="store_const", const="false"
        )

    def get_help_record(self, ctx: click.Context) -> tuple[str, str]:
        return f"{self.opts[0]} / {self.negative}", self.help or ""


def bool_help(p) -> str:
    """The help of a boolean option: its own text plus the forms it accepts."""
    flag = option_names(p.name)[0]
    return (
        f"{param_help(p)} Give {flag} or --no-{flag[2:]}, or {flag} VALUE with VALUE "
        f"one of {BOOL_WORDS_TEXT} (any case)."
    )


def protocol_options(protocol: type[Protocol]) -> list[click.Option]:
    """One click option per declared parameter (values kept as raw strings)."""
    options: list[click.Option] = []
    for p in protocol.params:
        names = option_names(p.name)
        if p.kind == "bool":
            negative = "--no-" + p.name.replace("_", "-")
            options.append(BoolOption(names, p.name, negative, bool_help(p)))
        else:
            metavar = {
                "int": "INT",
                "float": "FLOAT",
                "enum": "|".join(p.choices),
                "path": "PATH",
                "numlist": "N,N,...",
                "range": "START:STOP:STEP",
            }.get(p.kind, "TEXT")
            options.append(
                click.Option([*names, p.name], default=None, metavar=metavar, help=param_help(p))
            )
    return options


def describe(protocol: type[Protocol]) -> str:
    """The full form of a protocol as text (for ``hpcem protocols NAME``)."""
    lines = [f"{protocol.name} — {protocol.label}", ""]
    if protocol.help:
        lines += [protocol.help.strip(), ""]
    lines.append("Inputs:")
    for i in protocol.inputs or ():
        req = "required" if i.required else "optional"
        many = ", many" if i.many else ""
        lines.append(
            f"  --input {i.name}=RUN:OUTPUT   {' | '.join(i.types)} ({req}{many}) {i.help}"
        )
    if not protocol.inputs:
        lines.append("  (none)")
    lines.append("Parameters:")
    for p in protocol.params:
        expert = "  [expert]" if p.expert else ""
        lines.append(f"  {option_names(p.name)[0]:28s} {p.kind:8s} {param_help(p)}{expert}")
    lines.append("Outputs:")
    for o in protocol.outputs:
        lines.append(f"  {o.name:28s} {o.type} {o.help}")
    lines.append("Citations:")
    for c in protocol.citations:
        lines.append(f"  {c.short}  [{c.key}]")
    if not protocol.citations:
        lines.append("  (none)")
    return "\n".join(lines)
