"""authsvc/emails.py on its own: normal forms, refusals, skeletons. No database, seconds."""

from __future__ import annotations

import string
import unicodedata
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authsvc.auth import emails
from authsvc.auth.emails import (
    InvalidEmail,
    lookup_key,
    normalise,
    skeleton,
    stored_keys,
)

ANN = "ann.h@example.com"
# Each of these got an account of its own while ANN had one.
LOOK_ALIKES = {
    "fullwidth local part": "ａｎｎ.ｈ@example.com",
    "fullwidth domain": "ann.h@ｅｘａｍｐｌｅ.ｃｏｍ",
    "U+217F SMALL ROMAN NUMERAL ONE THOUSAND": "ann.h@example.co\u217f",
    "capitals": "ANN.H@EXAMPLE.COM",
}
INVISIBLE = {
    "U+200B ZERO WIDTH SPACE": "ann\u200b.h@example.com",
    "U+00AD SOFT HYPHEN": "ann\u00ad.h@example.com",
    "U+200B in the domain": "ann.h@exam\u200bple.com",
    "U+00AD in the domain": "ann.h@exam\u00adple.com",
    "U+200D ZERO WIDTH JOINER": "ann\u200d.h@example.com",
    "U+2060 WORD JOINER": "ann.h\u2060@example.com",
    "U+FEFF ZERO WIDTH NO-BREAK SPACE": "\ufeffann.h@example.com",
    "U+202E RIGHT-TO-LEFT OVERRIDE": "ann.h\u202e@example.com",
    "U+115F HANGUL CHOSEONG FILLER": "ann\u115f.h@example.com",
    "U+3164 HANGUL FILLER": "ann.h\u3164@example.com",
    "U+FFA0 HALFWIDTH HANGUL FILLER": "ann.h\uffa0@example.com",
    "U+034F COMBINING GRAPHEME JOINER": "ann\u034f.h@example.com",
    "U+FE0F VARIATION SELECTOR-16": "ann.h\ufe0f@example.com",
    "U+E0101 VARIATION SELECTOR-18": "ann.h\U000e0101@example.com",
    "U+E0041 TAG LATIN CAPITAL LETTER A": "ann.h\U000e0041@example.com",
    "U+180E MONGOLIAN VOWEL SEPARATOR": "ann.h\u180e@example.com",
    "U+0007 BELL": "ann.h\x07@example.com",
    "U+0085 NEXT LINE": "ann.h\x85@example.com",
    "U+00A0 NO-BREAK SPACE": "ann.h\u00a0@example.com",
    "U+2028 LINE SEPARATOR": "ann.h\u2028@example.com",
    "U+E000 private use": "ann.h\ue000@example.com",
    "U+0378 unassigned": "ann.h\u0378@example.com",
}


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Nothing here touches the database (this replaces conftest's emptying of it)."""


@pytest.mark.parametrize("address", LOOK_ALIKES.values(), ids=LOOK_ALIKES)
def test_look_alikes_of_ann_have_her_key(address: str) -> None:
    ann = normalise(ANN)
    alike = normalise(address)
    assert (alike.key, alike.skeleton) == (ann.key, ann.skeleton)
    assert lookup_key(address) == ann.key


def test_the_stored_form_is_nfkc_with_the_domain_in_idna_form_and_the_case_as_typed() -> None:
    assert normalise("ａｎｎ.ｈ@example.com").email == ANN
    assert normalise("ann.h@ｅｘａｍｐｌｅ.ｃｏｍ").email == ANN
    assert normalise("Ann.H@Example.com").email == "Ann.H@Example.com"
    assert normalise("ＡＮＮ.Ｈ@ＥＸＡＭＰＬＥ.com").email == "ANN.H@EXAMPLE.com"
    # IDNA: the domain in Unicode form, the key with its A-label.
    for typed in ("ann@bücher.de", "ann@BÜCHER.de", "ann@xn--bcher-kva.de", "ann@ｂüｃｈｅｒ.de"):
        address = normalise(typed)
        assert address.key == "ann@xn--bcher-kva.de", typed
        assert address.email.lower() == "ann@bücher.de", typed
    # UTS #46 maps the ideographic full stop to a dot.
    assert normalise("ann@example\u3002com").email == "ann@example.com"


@pytest.mark.parametrize("address", INVISIBLE.values(), ids=INVISIBLE)
def test_invisible_format_and_control_characters_are_refused(address: str) -> None:
    with pytest.raises(InvalidEmail, match="invisible, format or control characters") as refused:
        normalise(address)
    bad = next(c for c in address if c not in "ann.h@example.com")
    assert f"U+{ord(bad):04X}" in str(refused.value)


def test_invisible_characters_do_not_hide_from_login_or_from_old_rows() -> None:
    """Typed at login, or stored before the rules: dropped, as the skeleton drops them."""
    ann = normalise(ANN)
    for name in ("U+200B ZERO WIDTH SPACE", "U+00AD SOFT HYPHEN", "U+3164 HANGUL FILLER", "U+FE0F VARIATION SELECTOR-16"):
        assert lookup_key(INVISIBLE[name]) == ann.key, name
        assert stored_keys(INVISIBLE[name]) == (ann.key, ann.skeleton), name


@pytest.mark.parametrize(
    "address", ["ann.h", "ann.h@", "@example.com", "ann.h@localhost", "ann h@example.com", "ann@exa_mple.com",
                "ann@x.test", '"ann h"@example.com', "ann@[192.0.2.1]", "a" * 250 + "@example.com"],
)
def test_what_email_validator_refuses_is_refused_with_its_reason(address: str) -> None:
    with pytest.raises(InvalidEmail) as refused:
        normalise(address)
    assert str(refused.value)


@pytest.mark.parametrize(
    "one, other",
    [
        ("paypal@example.com", "pаypаl@example.com"),  # Cyrillic а
        ("ann@apple.com", "ann@xn--pple-43d.com"),  # Cyrillic а in the domain's A-label
        ("m@example.com", "rn@example.com"),
        ("bill@example.com", "bi1l@example.com"),
        ("john@example.com", "j0hn@example.com"),
        ("ann@example.com", "ann@examp1e.com"),
        ("ann@example.com", "ann@exarnple.corn"),
        ("o'neil@example.com", "o`neil@example.com"),
        ("ann@example.com", "ａｎｎ@example.com"),
        ("ann@example.com", "ann\u200b@example.com"),
        ("café@example.com", "cafe\u0301@example.com"),  # composed and decomposed
        ("ⅿary@example.com", "rnary@example.com"),
    ],
)
def test_look_alikes_share_a_skeleton(one: str, other: str) -> None:
    assert stored_keys(one)[1] == stored_keys(other)[1]


@pytest.mark.parametrize(
    "one, other",
    [("ann@example.com", "anne@example.com"), ("bill@example.com", "biil@example.com"), ("ann@example.com", "ann@example.org"),
     ("strasse@example.com", "straße@example.com"), ("a.b@example.com", "ab@example.com"), ("cafe@example.com", "café@example.com")],
)
def test_different_looking_addresses_do_not(one: str, other: str) -> None:
    assert stored_keys(one)[1] != stored_keys(other)[1]


def test_the_ascii_characters_the_skeleton_equates() -> None:
    """The price of the skeleton: ordinary ASCII addresses that differ only in these are one
    account's (case aside, as capitals are lower-cased first)."""
    atext = string.ascii_lowercase + string.digits + "!#$%&'*+-/=?^_`{|}~.@"
    classes = defaultdict(set)
    for char in atext:
        classes[skeleton(char)].add(char)
    equated = sorted(sorted(chars) for chars in classes.values() if len(chars) > 1)
    assert equated == [["'", "`"], ["0", "o"], ["1", "l", "|"]]
    # and one sequence: "m" is "rn"
    assert [c for c in atext if len(skeleton(c)) > 1 and skeleton(c).isascii()] == ["m"]
    assert skeleton("m") == skeleton("rn")


def test_lone_pairs_of_the_data_map_the_way_unicode_does() -> None:
    # confusables.txt: "030D ; 0670" and "2460 ; 2780"; the package keeps neither direction.
    assert emails.PROTOTYPES["\u030d"] == "\u0670" and "\u0670" not in emails.PROTOTYPES
    assert emails.PROTOTYPES["\u2460"] == "\u2780" and "\u2780" not in emails.PROTOTYPES
    # and stars: "0031 ; 006C", "0049 ; 006C", "006D ; 0072 006E"
    assert emails.PROTOTYPES["1"] == emails.PROTOTYPES["I"] == "l" and "l" not in emails.PROTOTYPES
    assert emails.PROTOTYPES["m"] == "rn"
    assert not any(emails.LRM in source + prototype for source, prototype in emails.PROTOTYPES.items())


def test_data_of_another_shape_is_refused() -> None:
    # "a" and "b" each have look-alikes of their own, and are look-alikes of each other.
    with pytest.raises(ValueError, match="source"):
        emails.prototypes({"a": [{"c": "b"}, {"c": "c"}], "b": [{"c": "a"}, {"c": "d"}], "c": [{"c": "a"}], "d": [{"c": "b"}]})


def test_keys_stay_short_enough_for_an_index() -> None:
    # NFKC makes 18 characters of U+FDFA; an old row could hold 254 of them.
    key, skel = stored_keys("\ufdfa" * 250 + "@x.com")
    assert len(key) <= emails.KEY_MAX and len(skel) <= emails.KEY_MAX
    assert stored_keys("\ufdfa" * 249 + "a@x.com")[0] != key


# --- properties ---

LETTERS = st.characters(categories=("Ll", "Lu", "Lo", "Nd", "Mn", "Nl", "So", "Sm", "Pc", "Pd"))
LOCAL = st.text(LETTERS | st.sampled_from("ａｂｃＡＢＣ．_-+ﬁ①ⅿ"), min_size=1, max_size=30)
DOMAINS = st.sampled_from(["example.com", "Example.COM", "ｅｘａｍｐｌｅ.ｃｏｍ", "bücher.de", "xn--bcher-kva.de", "例え.jp"])


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.emails(), st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAINS)))
def test_login_and_old_rows_find_what_signup_stored(address: str) -> None:
    """Whatever signup takes: the login key of what was typed, and of what was stored, is its
    key; the stored form normalises to itself."""
    try:
        stored = normalise(address)
    except InvalidEmail:
        return
    assert lookup_key(address) == stored.key
    assert lookup_key(stored.email) == stored.key
    assert stored_keys(address) == stored_keys(stored.email) == (stored.key, stored.skeleton)
    assert normalise(stored.email) == stored
    assert unicodedata.is_normalized("NFKC", stored.email)


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(max_size=300))
def test_the_login_side_takes_anything(text: str) -> None:
    assert isinstance(lookup_key(text), str)
    key, skel = stored_keys(text)
    assert len(key) <= emails.KEY_MAX and len(skel) <= emails.KEY_MAX
    try:
        normalise(text)
    except InvalidEmail:
        pass
