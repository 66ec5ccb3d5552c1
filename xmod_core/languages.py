"""Language codes and the language registry.

A language's module index is its position in an ordered list that travels with every checkpoint
(``model.languages`` and ``languages.json``). Adding a language appends, so the old indices stay;
removing one (``remove-language``) writes a new run in which the languages after it move down one
index, and says so in its ``languages.json``. Modules are keyed by name, never by index, so a
module file installs under any position. An unknown code is an error that lists the known ones
(no silent default language).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from xmod_core.errors import UserError

# fairseq / transformers style: ISO 639 language, underscore, region (or XX when none is implied).
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}_[A-Z]{2}$")

# The 81 xmod-base languages in transformers' / fairseq's index order.
XMOD_BASE_LANGUAGES: tuple[str, ...] = tuple(
    """en_XX id_ID vi_VN ru_RU fa_IR sv_SE ja_XX fr_XX de_DE ro_RO ko_KR hu_HU es_XX fi_FI uk_UA da_DK
    pt_XX no_XX th_TH pl_PL bg_BG nl_XX zh_CN he_IL el_GR it_IT sk_SK hr_HR tr_TR ar_AR cs_CZ lt_LT
    hi_IN zh_TW ca_ES ms_MY sl_SI lv_LV ta_IN bn_IN et_EE az_AZ sq_AL sr_RS kk_KZ ka_GE tl_XX ur_PK
    is_IS hy_AM ml_IN mk_MK be_BY la_VA te_IN eu_ES gl_ES mn_MN kn_IN ne_NP sw_KE si_LK mr_IN af_ZA
    gu_IN cy_GB eo_EO km_KH ky_KG uz_UZ ps_AF pa_IN ga_IE ha_NG am_ET lo_LA ku_TR so_SO my_MM or_IN
    sa_IN""".split()
)


class LanguageCodeError(UserError, ValueError):
    """A language code that is malformed or listed twice."""


class UnknownLanguageError(UserError, KeyError):
    """A language the model or the data does not have."""

    def __str__(self) -> str:  # KeyError would print its message quoted
        return str(self.args[0])


def check_language_code(code: str, where: str = "") -> str:
    """Return ``code`` if it looks like ``xx_YY``; raise ValueError naming it otherwise."""
    if not isinstance(code, str) or not LANGUAGE_CODE.match(code):
        place = f" in {where}" if where else ""
        raise LanguageCodeError(
            f"language code {code!r}{place} is not of the form xx_YY "
            "(ISO 639 language, underscore, region or XX, e.g. en_XX, de_DE, yo_NG)"
        )
    return code


def check_language_list(codes: Iterable[str], where: str = "") -> list[str]:
    """Validate every code and refuse duplicates (an index must name exactly one language)."""
    codes = [check_language_code(c, where) for c in codes]
    seen: set[str] = set()
    for code in codes:
        if code in seen:
            raise LanguageCodeError(f"language {code!r} is listed twice{' in ' + where if where else ''}")
        seen.add(code)
    return codes


def language_index(languages: Sequence[str], code: str) -> int:
    """Index of ``code`` in ``languages``; an unknown code raises KeyError listing the known ones."""
    try:
        return list(languages).index(code)
    except ValueError:
        raise UnknownLanguageError(
            f"unknown language {code!r}; this model has {len(languages)}: {', '.join(languages)}"
        ) from None
