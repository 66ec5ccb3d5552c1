"""Language codes and the language registry.

A language's module index is its position in an ordered list that travels with every checkpoint
(``model.languages`` and ``languages.json``). Adding a language appends, so the old indices stay;
removing one (``remove-language``) writes a new run in which the languages after it move down one
index, and says so in its ``languages.json``. Modules are keyed by name, never by index, so a
module file installs under any position. An unknown code is an error that lists the known ones
(no silent default language).

A code takes one of two forms. fairseq's and transformers' (the xmod-base checkpoint's): an
ISO 639 language, underscore, a region or XX (``en_XX``, ``yo_NG``). FLORES-200's and
FineWeb-2's, the long tail's: an ISO 639-3 language, underscore, an ISO 15924 script
(``yor_Latn``, ``tir_Ethi``). A model's codes are what it was given; ``SAME_LANGUAGE`` pairs the
two forms for xmod-base's 81 languages and the bundled ones, so that a code in the other form
is answered with the model's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from xmod_core.errors import UserError

# fairseq / transformers: ISO 639 language, underscore, region (or XX when none is implied).
REGION_CODE = re.compile(r"^[a-z]{2,3}_[A-Z]{2}$")
# FLORES-200 / FineWeb-2: ISO 639-3 language, underscore, ISO 15924 script.
SCRIPT_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
FORMS = ("xx_YY (ISO 639 language, region or XX: en_XX, yo_NG) or xxx_Xxxx (ISO 639-3 language, "
         "ISO 15924 script: yor_Latn, tir_Ethi)")

# The 81 xmod-base languages in transformers' / fairseq's index order.
XMOD_BASE_LANGUAGES: tuple[str, ...] = tuple(
    """en_XX id_ID vi_VN ru_RU fa_IR sv_SE ja_XX fr_XX de_DE ro_RO ko_KR hu_HU es_XX fi_FI uk_UA da_DK
    pt_XX no_XX th_TH pl_PL bg_BG nl_XX zh_CN he_IL el_GR it_IT sk_SK hr_HR tr_TR ar_AR cs_CZ lt_LT
    hi_IN zh_TW ca_ES ms_MY sl_SI lv_LV ta_IN bn_IN et_EE az_AZ sq_AL sr_RS kk_KZ ka_GE tl_XX ur_PK
    is_IS hy_AM ml_IN mk_MK be_BY la_VA te_IN eu_ES gl_ES mn_MN kn_IN ne_NP sw_KE si_LK mr_IN af_ZA
    gu_IN cy_GB eo_EO km_KH ky_KG uz_UZ ps_AF pa_IN ga_IE ha_NG am_ET lo_LA ku_TR so_SO my_MM or_IN
    sa_IN""".split()
)

# The same language in FLORES-200's form, for xmod-base's 81 languages (in their order) and the
# bundled corpora's others. Where FLORES-200 names one variety of a macrolanguage it is the one
# CC-100's text mostly is: Standard Arabic, Iranian Persian, Norwegian Bokmål, Standard Malay.
SAME_LANGUAGE: dict[str, str] = dict(pair.split("=") for pair in """
    en_XX=eng_Latn id_ID=ind_Latn vi_VN=vie_Latn ru_RU=rus_Cyrl fa_IR=pes_Arab sv_SE=swe_Latn
    ja_XX=jpn_Jpan fr_XX=fra_Latn de_DE=deu_Latn ro_RO=ron_Latn ko_KR=kor_Hang hu_HU=hun_Latn
    es_XX=spa_Latn fi_FI=fin_Latn uk_UA=ukr_Cyrl da_DK=dan_Latn pt_XX=por_Latn no_XX=nob_Latn
    th_TH=tha_Thai pl_PL=pol_Latn bg_BG=bul_Cyrl nl_XX=nld_Latn zh_CN=zho_Hans he_IL=heb_Hebr
    el_GR=ell_Grek it_IT=ita_Latn sk_SK=slk_Latn hr_HR=hrv_Latn tr_TR=tur_Latn ar_AR=arb_Arab
    cs_CZ=ces_Latn lt_LT=lit_Latn hi_IN=hin_Deva zh_TW=zho_Hant ca_ES=cat_Latn ms_MY=zsm_Latn
    sl_SI=slv_Latn lv_LV=lvs_Latn ta_IN=tam_Taml bn_IN=ben_Beng et_EE=est_Latn az_AZ=azj_Latn
    sq_AL=als_Latn sr_RS=srp_Cyrl kk_KZ=kaz_Cyrl ka_GE=kat_Geor tl_XX=tgl_Latn ur_PK=urd_Arab
    is_IS=isl_Latn hy_AM=hye_Armn ml_IN=mal_Mlym mk_MK=mkd_Cyrl be_BY=bel_Cyrl la_VA=lat_Latn
    te_IN=tel_Telu eu_ES=eus_Latn gl_ES=glg_Latn mn_MN=khk_Cyrl kn_IN=kan_Knda ne_NP=npi_Deva
    sw_KE=swh_Latn si_LK=sin_Sinh mr_IN=mar_Deva af_ZA=afr_Latn gu_IN=guj_Gujr cy_GB=cym_Latn
    eo_EO=epo_Latn km_KH=khm_Khmr ky_KG=kir_Cyrl uz_UZ=uzn_Latn ps_AF=pbt_Arab pa_IN=pan_Guru
    ga_IE=gle_Latn ha_NG=hau_Latn am_ET=amh_Ethi lo_LA=lao_Laoo ku_TR=kmr_Latn so_SO=som_Latn
    my_MM=mya_Mymr or_IN=ory_Orya sa_IN=san_Deva
    yo_NG=yor_Latn ti_ET=tir_Ethi ig_NG=ibo_Latn
    """.split())
_BY_EITHER_FORM = {**SAME_LANGUAGE, **{flores: ours for ours, flores in SAME_LANGUAGE.items()}}


class LanguageCodeError(UserError, ValueError):
    """A language code that is malformed or listed twice."""


class UnknownLanguageError(UserError, KeyError):
    """A language the model or the data does not have."""

    def __str__(self) -> str:  # KeyError would print its message quoted
        return str(self.args[0])


def check_language_code(code: str, where: str = "") -> str:
    """Return ``code`` if it has one of the two forms; raise ValueError naming it otherwise."""
    if not isinstance(code, str) or not (REGION_CODE.match(code) or SCRIPT_CODE.match(code)):
        place = f" in {where}" if where else ""
        raise LanguageCodeError(f"language code {code!r}{place} is not of the form {FORMS}")
    return code


def same_language(code: str, languages: Sequence[str]) -> str | None:
    """The code in ``languages`` that names ``code``'s language in the other form, if any."""
    other = _BY_EITHER_FORM.get(code)
    return other if other in languages else None


def check_language_list(codes: Iterable[str], where: str = "") -> list[str]:
    """Validate every code and refuse duplicates, in either form (an index must name exactly one
    language: en_XX beside eng_Latn would give one language two modules)."""
    codes = [check_language_code(c, where) for c in codes]
    place = f" in {where}" if where else ""
    seen: list[str] = []
    for code in codes:
        if code in seen:
            raise LanguageCodeError(f"language {code!r} is listed twice{place}")
        other = same_language(code, seen)
        if other is not None:
            raise LanguageCodeError(f"{other} and {code} are one language, listed twice{place}: "
                                    "keep one of the two codes")
        seen.append(code)
    return codes


def other_form_hint(code: str, languages: Sequence[str]) -> str:
    """``: this model calls that language yo_NG; use yo_NG`` when ``code`` is in the other form of
    one of ``languages`` (``same_language``), else empty: for messages about an unknown code."""
    other = same_language(code, languages)
    return "" if other is None else f": this model calls that language {other}; use {other}"


def language_index(languages: Sequence[str], code: str) -> int:
    """Index of ``code`` in ``languages``; an unknown code raises KeyError listing the known ones,
    or naming the model's code of the same language when ``code`` is in the other form."""
    try:
        return list(languages).index(code)
    except ValueError:
        hint = other_form_hint(code, languages)
        if hint:
            raise UnknownLanguageError(f"unknown language {code!r}{hint}") from None
        raise UnknownLanguageError(
            f"unknown language {code!r}; this model has {len(languages)}: {', '.join(languages)}"
        ) from None
