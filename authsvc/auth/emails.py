"""Email addresses: the one form they are stored and compared in, and their look-alike key.

Each account has three strings (migrations/0006_email_keys.sql):

- `email`, as stored and shown: Unicode NFKC, the domain as IDNA has it (UTS #46 mapping and
  IDNA2008 rules, by email-validator; an ASCII domain keeps the case it was typed in, as the
  local part does);
- `key`, what "the same address" means: the local part lower-cased, the domain's A-label
  (`xn--...`). Unique, and what a login looks up;
- `skeleton`, what "looks the same" means: the UTS #39 skeleton of the lower-cased address
  with its domain in Unicode, lower-cased again. Unique too, so an address that looks like an
  existing account's is refused as a duplicate is.

`normalise` is for new addresses (signup): it refuses invisible, format and control
characters, and whatever email-validator refuses. `lookup_key` and `stored_keys` never
refuse: they are for what is typed at login and for addresses stored before these rules.
They drop default-ignorable characters (as the skeleton does) and give what is not an address
a key too, one that no valid address has.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from dataclasses import dataclass

import regex
from confusable_homoglyphs.confusables import confusables_data
from email_validator import ValidatedEmail, validate_email

# Zero-width and format characters, Hangul fillers, variation selectors, tags: the
# standard library's unicodedata cannot tell this property.
IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
# Refused besides: controls, format characters, surrogates, private use, separators, and
# code points unassigned in the Unicode version NFKC uses here (assigned later, they could
# normalise differently, and a stored key must not change).
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# Longer keys are shortened to their beginning and a digest, to stay well within what a
# PostgreSQL btree index entry can hold (2,704 bytes) whatever an old row holds.
KEY_MAX = 500
# confusable-homoglyphs copies confusables.txt's comments, which wrap right-to-left
# characters in LEFT-TO-RIGHT MARKs.
LRM = "\u200e"


class InvalidEmail(ValueError):
    """Not an address a new account may have; the message says why."""


@dataclass(frozen=True)
class Address:
    email: str  # stored and shown
    key: str  # compared, and looked up at login
    skeleton: str  # compared: look-alikes share it


def normalise(address: str) -> Address:
    """The forms of a new account's address, or InvalidEmail."""
    text = unicodedata.normalize("NFKC", address)
    for form in (address, text):  # NFKC makes some itself (U+FFA0 becomes the filler U+3164)
        char = _refused_character(form)
        if char is not None:
            raise InvalidEmail(f"Must not contain invisible, format or control characters ({_describe(char)}).")
    parsed = _parse(text)
    typed_domain = text[text.rindex("@") + 1 :]
    domain = typed_domain if typed_domain.lower() == parsed.domain else parsed.domain
    key, skeleton_key = _keys(parsed)
    return Address(f"{parsed.local_part}@{domain}", key, skeleton_key)


@functools.lru_cache(maxsize=4096)  # a login flood repeats its identifiers
def lookup_key(identifier: str) -> str:
    """The key of what was typed as a login identifier, whatever it is: an address gets the
    key `normalise` gives it, anything else a key no valid address has."""
    text, parsed = _lenient(identifier)
    return _keys(parsed)[0] if parsed is not None else _bounded(_fold(text))


def stored_keys(email: str) -> tuple[str, str]:
    """(key, skeleton) of an address stored before these rules, however it was typed then."""
    text, parsed = _lenient(email)
    if parsed is not None:
        return _keys(parsed)
    folded = _fold(text)
    return _bounded(folded), _bounded(skeleton(folded))


def skeleton(text: str) -> str:
    """The UTS #39 skeleton of text, lower-cased: equal for strings that look alike (Latin `a`
    and Cyrillic `а`, `rn` and `m`, `1` and `l`, `0` and `o`)."""
    text = IGNORABLE.sub("", unicodedata.normalize("NFD", text))
    mapped = "".join(PROTOTYPES.get(char, char) for char in text)
    return unicodedata.normalize("NFD", mapped.lower())


def prototypes(data: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    """Each character's prototype in Unicode's confusables.txt, from confusable-homoglyphs' data.

    That package records each line of the file ("source ; prototype") both ways round, as
    look-alikes, without saying which is the prototype. The file's own rules tell it again: a
    source has one line and a prototype is never a source, so a prototype and its sources
    form a star whose centre is the prototype: the one with several look-alikes, or the
    sequence (sources are single characters). In a lone pair of single characters the
    prototype is the one written second (the package writes each line's source first).
    Data of another shape is refused (ValueError) rather than misread.
    """
    alike: dict[str, set[str]] = {}
    order: dict[str, int] = {}
    for key, entries in data.items():
        char = key.replace(LRM, "")
        order.setdefault(char, len(order))
        for entry in entries:
            other = entry["c"].replace(LRM, "")
            alike.setdefault(char, set()).add(other)
            alike.setdefault(other, set()).add(char)
    mapping = {}
    for char, others in alike.items():
        if len(char) != 1 or len(others) != 1:
            continue  # a prototype
        (other,) = others
        if len(other) == 1 and len(alike[other]) == 1 and order.get(other, -1) < order.get(char, -1):
            continue  # the prototype of a lone pair
        mapping[char] = other
    for char, others in alike.items():
        for other in others:  # every pair of look-alikes: a source and its prototype
            if mapping.get(char) != other and mapping.get(other) != char:
                raise ValueError(f"confusables data: neither of {char!r} and {other!r} is the other's source")
    for source, prototype in mapping.items():
        if any(char in mapping for char in prototype):
            raise ValueError(f"confusables data: the prototype of {source!r} is a source itself")
    return mapping


PROTOTYPES = prototypes(confusables_data)


def _refused_character(text: str) -> str | None:
    for char in text:
        if unicodedata.category(char) in REFUSED_CATEGORIES or IGNORABLE.match(char):
            return char
    return None


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"


def _parse(text: str) -> ValidatedEmail:
    """email-validator's reading of an address: syntax and IDNA, no DNS."""
    try:
        return validate_email(text, check_deliverability=False)
    except ValueError as exc:  # EmailNotValidError, and whatever IDNA raises that it does not wrap
        raise InvalidEmail(str(exc)) from None


def _lenient(text: str) -> tuple[str, ValidatedEmail | None]:
    text = unicodedata.normalize("NFKC", IGNORABLE.sub("", text))
    try:
        return text, _parse(text)
    except InvalidEmail:
        return text, None


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text.lower())


def _keys(parsed: ValidatedEmail) -> tuple[str, str]:
    local = _fold(parsed.local_part)
    return _bounded(f"{local}@{parsed.ascii_domain}"), _bounded(skeleton(f"{local}@{parsed.domain}"))


def _bounded(key: str) -> str:
    if len(key) <= KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[: KEY_MAX - 72]}~sha256:{digest}"
