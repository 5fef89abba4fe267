"""The vectorized identifier path (mapping.normalize_column) never disagrees with normalize().

normalize() (phonenumbers for phones) is what the store applies, so it is the oracle: every
value drawn here is normalized both ways and must come out the same, None on both sides when
rejected (and None for blank cells, which identify nobody). Phone numbers are drawn from the
whole domain phonenumbers knows: its example number of every type for every region and
non-geographic code, written in E.164, international and national format, with and without "+",
with other separators, junk, Unicode digits and spaces, and read under several default regions.
Many values are batched into one polars column per example, so the test stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import phonenumbers
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backfill.plan.mapping
import backfill.plan.normalize
from backfill.config import Identifier
from backfill.errors import InvalidIdentifierError
from backfill.plan.mapping import normalize_column
from backfill.plan.normalize import SPACE_CHARS, normalize

PNF = phonenumbers.PhoneNumberFormat


def _examples() -> list[phonenumbers.PhoneNumber]:
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(12):  # every PhoneNumberType but UNKNOWN
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                numbers.append(number)
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            numbers.append(number)
    return numbers


EXAMPLES = _examples()
# The regions whose metadata decides national formats differently: the US and its NANP
# neighbours (JM reads like the US, BS and AG prepend an area code), prefix "0" (GB, DE, FR),
# none (IT, keeps its leading 0), a rewriting prefix (AR, BR, MX), and 8 (RU, BY).
REGIONS = ["US", "CA", "JM", "BS", "AG", "GB", "DE", "FR", "IT", "AR", "BR", "MX", "RU", "BY",
           "IN", "SG", "CN", "JP", "AU", "ZA"]  # fmt: skip
FULLWIDTH = str.maketrans("0123456789+", "".join(chr(0xFF10 + i) for i in range(10)) + "\uff0b")
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + i) for i in range(10)))
SEPARATORS = ["", " ", "-", ".", "  ", "\t", "\xa0", "\u3000", "\x1c", "/", " - "]


def expected(value: str | None, normalization: str, region: str) -> str | None:
    """What normalize_column must say: normalize(), None when rejected or blank."""
    if value is None or not value.strip():
        return None
    try:
        return normalize(value, normalization, region)
    except InvalidIdentifierError:
        return None


def vectorized(values: Sequence[str | None], normalization: str, region: str) -> list[str | None]:
    frame = pl.DataFrame({"v": list(values)}, schema={"v": pl.String})
    out: list[str | None] = normalize_column(
        frame, Identifier("v", "x" + normalization, normalization, region)
    ).to_list()
    return out


def assert_agree(values: Sequence[str | None], normalization: str, region: str) -> None:
    got = vectorized(values, normalization, region)
    want = [expected(v, normalization, region) for v in values]
    wrong = [(v, g, w) for v, g, w in zip(values, got, want, strict=True) if g != w]
    assert not wrong, f"{normalization} under {region}: (value, vectorized, normalize) {wrong[:10]}"


def renderings(number: phonenumbers.PhoneNumber) -> list[str]:
    """The ways an extract writes one number."""
    e164 = phonenumbers.format_number(number, PNF.E164)
    intl = phonenumbers.format_number(number, PNF.INTERNATIONAL)
    national = phonenumbers.format_number(number, PNF.NATIONAL)
    return [e164, e164[1:], intl, intl[1:], national, national.replace(" ", ""),
            phonenumbers.format_number(number, PNF.RFC3966), f"+{number.country_code} {national}",
            f"00{e164[1:]}", f"011{e164[1:]}"]  # fmt: skip


@pytest.mark.parametrize("region", ["US", "BS", "GB", "AR"])
def test_every_example_number_agrees(region: str) -> None:
    """Every region's example numbers, in every usual format, agree under each default region."""
    values: list[str | None] = [r for n in EXAMPLES for r in renderings(n)]
    assert_agree(values, "phone", region)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("+6591234567", "+6591234567"),  # Singapore, not +1 659...
        ("+4532123456", "+4532123456"),  # Denmark, not +1 453...
        ("+2125551234", None),  # Morocco's code, too short for it: invalid, not a US number
        ("+65 9123 4567", "+6591234567"),
        ("+1 317 555 6789", "+13175556789"),
        (
            "3175556789".translate(FULLWIDTH),
            "+13175556789",
        ),  # full-width digits: phonenumbers reads them
    ],
)
def test_a_plus_without_1_is_never_a_us_number(raw: str, want: str | None) -> None:
    """The findings of issue 9: a "+" and a country code other than 1 keep their country."""
    assert vectorized([raw], "phone", "US") == [want]
    assert expected(raw, "phone", "US") == want


def _mutate(draw: st.DrawFn, text: str) -> str:
    """One of the things real extracts do to a number."""
    how = draw(st.integers(0, 9))
    if how == 0:  # another separator between the groups
        return draw(st.sampled_from(SEPARATORS)).join(text.split(" "))
    if how == 1:  # a digit dropped or added: other lengths, other countries
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        if not digits:
            return text
        i = draw(st.sampled_from(digits))
        return text[:i] + (draw(st.sampled_from(["", "0", "1", "7"]))) + text[i + 1 :]
    if how == 2:
        return text.translate(FULLWIDTH if draw(st.booleans()) else ARABIC_INDIC)
    if how == 3:  # leading and trailing junk or white space
        before = draw(
            st.sampled_from(["", " ", "\x1c", "\u2028", "tel:", "(", "0", "1", "+", "++"])
        )
        after = draw(st.sampled_from(["", " ", "\x1f", " x12", " ext. 5", "#", ")", "-"]))
        return before + text + after
    if how == 4:  # digits replaced at random
        return "".join(
            str(draw(st.integers(0, 9))) if c.isdigit() and draw(st.booleans()) else c for c in text
        )
    if how == 5:
        return text.replace(" ", "", 1).replace("-", " ")
    return text


@st.composite
def phone_values(draw: st.DrawFn) -> str | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.none() | st.text(alphabet="0123456789+-. ()x\t\xa0\uff11", max_size=20))
    if kind == 1:  # US shapes, with area codes and exchanges of every first digit
        area, exchange, line = (
            draw(st.integers(0, 999)),
            draw(st.integers(0, 999)),
            draw(st.integers(0, 9999)),
        )
        shapes = ["{}{}{}", "({}) {}-{}", "1-{}-{}-{}", "+1 {} {} {}", "+1({}){}-{}",
                  "1 ({}) {}.{}", "{}.{}.{}", "+{} {} {}"]  # fmt: skip
        shape = draw(st.sampled_from(shapes))
        return shape.format(f"{area:03d}", f"{exchange:03d}", f"{line:04d}")
    number = draw(st.sampled_from(EXAMPLES))
    return _mutate(draw, draw(st.sampled_from(renderings(number))))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(REGIONS) | st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)),
    st.lists(phone_values(), min_size=1, max_size=150),
)
def test_phone_numbers_agree(region: str, values: list[str | None]) -> None:
    """Drawn numbers, mutated the ways extracts mutate them, agree under any default region."""
    assert_agree(values, "phone", region)


# Letters whose case mapping is subtle: final sigma, dotted I, sharp s, ligatures, Cherokee,
# and letters newer than Python 3.11's Unicode that Rust lower-cases (U+1C89, U+A7CB, U+10D50).
TRICKY = (
    "\u03a3\u03c3\u03c2\u0391\u039f\u0130I\u0131\u00df\u1e9e\ufb00\u01c5\u03a9"
    "\u1c89\ua7cb\U00010d50\u13f8\uab70\u0345\u200b\u180e"
)
ASCII = "aZ.@_+-09\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x7f"
EMAIL_TEXT = (
    st.text(alphabet=ASCII, max_size=12)
    | st.text(alphabet="aZ.@" + SPACE_CHARS + TRICKY, max_size=8)
    | st.text(max_size=8)
)


@pytest.mark.parametrize(
    "value",
    [
        "a\x1cb",
        " Ann.Lee @X.COM\x1f",
        "\u039f\u0394\u039f\u03a3@x.gr",
        "\u0130z@x.tr",
        "\u1c89@x",
        "\ua7cb",
        "\u3000",
    ],
)
@pytest.mark.parametrize("normalization", ["email", "trim", "none"])
def test_text_subtleties_agree(normalization: str, value: str) -> None:
    """The known traps between Python and polars: U+001C..U+001F are spaces to str.strip() only;
    final sigma, dotted I, and letters Rust lower-cases but Python 3.11 does not."""
    assert_agree([value], normalization, "US")


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["email", "trim", "none"]),
    st.lists(st.none() | EMAIL_TEXT, min_size=1, max_size=100),
)
def test_text_normalizations_agree(normalization: str, values: list[str | None]) -> None:
    """Email, trim and none agree on any text: Unicode spaces, cases and U+001C..U+001F."""
    assert_agree(values, normalization, "US")


def test_non_string_columns_are_read_as_their_text() -> None:
    """An integer phone column (Parquet) normalizes like the same digits written as text."""
    frame = pl.DataFrame({"v": [3175556789, 442079460958, 12]})
    got = normalize_column(frame, Identifier("v", "phone", "phone", "US")).to_list()
    assert got == ["+13175556789", "+442079460958", None]


def test_common_shapes_never_reach_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """US shapes, +<code> numbers of every country and ASCII emails are settled by polars:
    normalize() is not called for them (the speed of planning depends on it)."""
    calls: list[str] = []
    real: Callable[[str, str, str], str] = backfill.plan.normalize.normalize

    def counting(value: str, normalization: str, region: str = "US") -> str:
        calls.append(value)
        return real(value, normalization, region)

    monkeypatch.setattr(backfill.plan.mapping, "normalize", counting)
    plus = [
        phonenumbers.format_number(n, f)
        for n in EXAMPLES
        for f in (PNF.E164, PNF.INTERNATIONAL)
        # phonenumbers may rewrite a national number that starts with a national prefix; those
        # go to the slow path by design, and real numbers rarely start with one.
        if not phonenumbers.national_significant_number(n).startswith("0")
    ]
    us = ["(317) 555-6789", "317.555.6789", "+1 317 555 6789", "1-317-555-6789", "3175556789"]
    phones = [*plus, *us, "+999 123", "+2125551234", "442079460958"]
    assert vectorized(phones, "phone", "US") == [expected(v, "phone", "US") for v in phones]
    emails = vectorized([" Ann.Lee @Example.COM ", "B@X.IO\t"], "email", "US")
    assert emails == ["ann.lee@example.com", "b@x.io"]
    # A few example numbers' national numbers do start with their prefix (Russia's 8, ...).
    assert len(calls) <= len(plus) // 100, calls[:20]
