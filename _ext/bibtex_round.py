"""Author-year citations in round brackets, for sphinxcontrib-bibtex.

sphinxcontrib-bibtex's ``author_year`` style puts citations in square brackets
("Zhang *et al.* [2023]"). This registers ``author_year_round``, the same style with
round brackets and a plain "et al.": {cite:t} renders "Zhang et al. (2023)" and
{cite:p} "(Zhang et al., 2023)". Loaded through ``sphinx: local_extensions`` in
_config.yml and selected there with ``bibtex_reference_style: author_year_round``.
"""

from dataclasses import dataclass, field

import sphinxcontrib.bibtex.plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle, PersonStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle


def _round() -> BracketStyle:
    return BracketStyle(left="(", right=")", sep="; ")


def _person() -> PersonStyle:
    return PersonStyle(other=" et al.")


@dataclass
class RoundAuthorYearReferenceStyle(AuthorYearReferenceStyle):
    bracket_textual: BracketStyle = field(default_factory=_round)
    bracket_parenthetical: BracketStyle = field(default_factory=_round)
    bracket_author: BracketStyle = field(default_factory=_round)
    bracket_label: BracketStyle = field(default_factory=_round)
    bracket_year: BracketStyle = field(default_factory=_round)
    person: PersonStyle = field(default_factory=_person)


sphinxcontrib.bibtex.plugin.register_plugin(
    "sphinxcontrib.bibtex.style.referencing", "author_year_round", RoundAuthorYearReferenceStyle
)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}
