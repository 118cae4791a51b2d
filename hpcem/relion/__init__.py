"""RELION 3.1 programs run by hpcem protocols: finding them and checking their version
(:mod:`hpcem.relion.programs`), running one command with its log and provenance
(:mod:`hpcem.relion.runner`), the MPI launcher of ``relion_refine_mpi``
(:mod:`hpcem.relion.mpi`), what the ``relion_refine`` protocols share
(:mod:`hpcem.relion.refine`), one micrograph picked by ``relion_autopick``
(:mod:`hpcem.relion.autopick`), reading RELION output tables hpcem has no set for
(:mod:`hpcem.relion.star`), and RELION's citations. Conversions of hpcem sets to and from
RELION's STAR files are :mod:`hpcem.convert.relion`'s."""

from hpcem.protocol import Citation

SCHERES_2012 = Citation(
    "Scheres2012",
    "@article{Scheres2012, author = {Scheres, Sjors H. W.}, title = {{RELION}: "
    "Implementation of a {Bayesian} approach to cryo-{EM} structure determination}, "
    "journal = {J. Struct. Biol.}, volume = {180}, number = {3}, pages = {519--530}, "
    "year = {2012}, doi = {10.1016/j.jsb.2012.09.006}}",
)
ZIVANOV_2018 = Citation(
    "Zivanov2018",
    "@article{Zivanov2018, author = {Zivanov, Jasenko and Nakane, Takanori and Forsberg, "
    'Bj{\\"o}rn O. and Kimanius, Dari and Hagen, Wim J. H. and Lindahl, Erik and Scheres, '
    "Sjors H. W.}, title = {New tools for automated high-resolution cryo-{EM} structure "
    "determination in {RELION}-3}, journal = {eLife}, volume = {7}, pages = {e42166}, "
    "year = {2018}, doi = {10.7554/eLife.42166}}",
)
ZIVANOV_2019 = Citation(
    "Zivanov2019",
    "@article{Zivanov2019, author = {Zivanov, Jasenko and Nakane, Takanori and Scheres, "
    "Sjors H. W.}, title = {A {Bayesian} approach to beam-induced motion correction in "
    "cryo-{EM} single-particle analysis}, journal = {IUCrJ}, volume = {6}, number = {1}, "
    "pages = {5--17}, year = {2019}, doi = {10.1107/S205225251801463X}}",
)

#: RELION's citations, for every protocol that runs a RELION program.
RELION_CITATIONS = (SCHERES_2012, ZIVANOV_2018)
