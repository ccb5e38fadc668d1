"""Content categories of extracted text, and redaction of personal data.

Each category is a named detector over a memorized span's text. Detectors are
deliberately simple, documented regular expressions (an auditor must be able
to say what was counted); they over- rather than under-count secrets.

=============  ==============================================================
category       what is counted
=============  ==============================================================
emails         ``local@domain.tld`` addresses
phone_numbers  sequences of 10-15 digits with the usual separators, optionally
               ``+country``, e.g. ``+1 (555) 010-9999``, ``020 7946 0958``;
               never four digit groups joined only by dots (an IPv4
               address such as ``192.168.10.20`` or a version ``1.2.3.4``)
ip_addresses   dotted IPv4 addresses with every octet <= 255, and full or
               ``::``-compressed IPv6 addresses
urls           ``http(s)://``, ``ftp://`` and ``www.`` links
uuids          canonical 8-4-4-4-12 hexadecimal UUIDs
keys           API-key-like tokens (``sk-...``, ``AKIA...``, ``ghp_...``,
               ``xox?-...``, ``AIza...``, JWTs, ``key/secret/token = <20+
               chars>``, ``api_key = "<any quoted value>"``, ``password:
               <any 3+ characters>``) and PEM blocks (``-----BEGIN ... -----``)
code           a span with at least 3 lines of which at least 30 % look like
               source code (keywords such as ``def``/``function``/``#include``,
               or lines ending in ``;``, ``{`` or ``}``)
license_text   well-known licence phrases (MIT, Apache, GPL/LGPL, BSD,
               Creative Commons, "All rights reserved")
=============  ==============================================================

``redact(text)`` replaces personal data and secrets (emails, phone numbers,
IP addresses, keys and PEM blocks, credentials in URLs) with ``[EMAIL]``,
``[PHONE]``, ``[IP]``, ``[KEY]``, ``[PEM]`` and ``[CREDENTIALS]``.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from reports.inputs import ASCII_LOWER

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}")
PHONE = re.compile(
    r"(?<![\w.+\-])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)[\s.\-]?)?\d{2,4}(?:[\s.\-]\d{2,4}){1,4}(?![\w.\-]?\d)")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)")
IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4})(?![0-9A-Fa-f:])")
URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"((?:https?|ftp)://)[^\s/@<>\"']+:[^\s/@<>\"']+@", re.IGNORECASE)
UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
PEM = re.compile(r"-----BEGIN [A-Z0-9 ]{1,40}-----(?:.*?-----END [A-Z0-9 ]{1,40}-----|.*\Z)", re.DOTALL)
KEY_TOKEN = re.compile(
    r"\b(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_\-]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})")
# A credential assigned to a keyword: ``api_key = "..."`` (any quoted value), ``token: <20+ key
# characters>``, ``password: hunter2`` (any 3+ characters after a password keyword). A finding holds
# its keyword (group "head": keyword and separator), so a stored finding, such as a category
# example, is found and masked again by :func:`redact`, which keeps the head and masks the value.
KEY_ASSIGN = re.compile(
    r"(?P<head>(?i:(?P<kw>api[_-]?key|access[_-]?key|secret|token|password|passwd|pwd))[\"']?[ \t]*[:=][ \t]*)"
    r"(?P<val>\"[^\"\r\n]{1,256}\"|'[^'\r\n]{1,256}'|[^\s\"'<>,;]{3,})")
_KEY_VALUE = re.compile(r"[A-Za-z0-9_\-+/=]{20,}")
_PASSWORD_WORDS = ("password", "passwd", "pwd")
_KEY_MARKERS = ("sk-", "AKIA", "ASIA", "gh", "github_pat_", "xox", "AIza", "eyJ")
_ASSIGN_MARKERS = ("api_key", "api-key", "apikey", "access_key", "access-key", "accesskey", "secret", "token",
                   "password", "passwd", "pwd")


def _assign_ok(m: re.Match) -> bool:
    """A KEY_ASSIGN match is a credential: a quoted value, a password's value, or a key-like value."""
    val = m.group("val")
    return val[0] in "\"'" or m.group("kw").lower() in _PASSWORD_WORDS or _KEY_VALUE.fullmatch(val) is not None
CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |function\b|var |let |const |public |private |"
    r"static |return\b|if\s*\(|for\s*\(|while\s*\(|#include|#define|package |func |fn |"
    r"using |namespace |SELECT |INSERT |<\?php|@\w+)|[;{}]\s*$")
LICENSE_PHRASES = (
    "permission is hereby granted, free of charge", 'the software is provided "as is"',
    "licensed under the apache license", "gnu general public license", "gnu lesser general public license",
    "gnu affero general public license", "redistribution and use in source and binary forms",
    "creative commons", "all rights reserved", "this program is free software",
    "without warranties or conditions of any kind", "spdx-license-identifier")

CATEGORIES = ("emails", "phone_numbers", "ip_addresses", "urls", "uuids", "keys", "code", "license_text")

CATEGORY_LABELS = {
    "emails": "Email addresses", "phone_numbers": "Phone numbers", "ip_addresses": "IP addresses",
    "urls": "URLs", "uuids": "UUIDs", "keys": "Keys and PEM blocks", "code": "Source code",
    "license_text": "Licence text",
}

# categories whose individual findings are personal data / secrets
PERSONAL = ("emails", "phone_numbers", "ip_addresses", "keys")


_DIGIT = re.compile(r"\d")
# every PHONE match holds two digit groups joined by one separator: a digit, [\s.\-], a digit
_PHONE_HINT = re.compile(r"\d[\s.\-]\d")


# four groups of digits joined by dots alone: an IPv4 address (192.168.10.20) or a version
# string (1.2.3.4, 2023.11.26.1200), never a phone number
_DOTTED_QUAD = re.compile(r"\d+(?:\.\d+){3}")


def _phone_ok(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    return 10 <= digits <= 15 and _DOTTED_QUAD.fullmatch(s) is None


def find_all(text: str) -> dict[str, list[str]]:
    """Findings per category (the matched strings; for ``code`` and
    ``license_text`` a single marker string when the span qualifies)."""
    # cheap pre-checks skip the regular expressions that cannot match (same results, faster)
    low = text.lower()
    digits = _DIGIT.search(text) is not None
    lic = [p for p in LICENSE_PHRASES if p in low]
    return _detect(text, "@" in text, digits, digits and _PHONE_HINT.search(text) is not None, "." in text,
                   "::" in text or text.count(":") >= 7, "://" in text or "www." in text or "WWW." in text,
                   text.count("-") >= 4, any(k in text for k in _KEY_MARKERS),
                   any(k in low for k in _ASSIGN_MARKERS), "-----BEGIN " in text, True, lic[0] if lic else None)


def _detect(text: str, at: bool, digits: bool, phone: bool, dot: bool, v6: bool, url: bool, uuid: bool,
            key: bool, assign: bool, pem: bool, lines_maybe: bool, lic: str | None) -> dict[str, list[str]]:
    """find_all given its pre-checks (each False only where its regular expression cannot match)."""
    out: dict[str, list[str]] = {"emails": [], "phone_numbers": [], "ip_addresses": [], "urls": [], "uuids": [],
                                 "keys": [], "code": [], "license_text": []}      # CATEGORIES, in order
    if at:
        out["emails"] = EMAIL.findall(text)
    if digits:
        if phone:
            out["phone_numbers"] = [m.group(0) for m in PHONE.finditer(text) if _phone_ok(m.group(0))]
        if dot:
            out["ip_addresses"] = IPV4.findall(text)
    if v6:
        out["ip_addresses"] += [m for m in IPV6.findall(text) if m.count(":") >= 2]
    if url:
        out["urls"] = URL.findall(text)
    if uuid:
        out["uuids"] = UUID.findall(text)
    if key:
        out["keys"] = KEY_TOKEN.findall(text)
    if assign:
        out["keys"] += [m.group(0) for m in KEY_ASSIGN.finditer(text) if _assign_ok(m)]
    if pem:
        out["keys"] += [m.group(0)[:40] for m in PEM.finditer(text)]
    if lines_maybe:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) >= 3 and sum(1 for ln in lines if CODE_LINE.search(ln)) >= 0.3 * len(lines):
            out["code"] = ["code"]
    if lic is not None:
        out["license_text"] = [lic]
    return out


BATCH_CHARS = 1 << 23       # characters of ASCII text per batch of find_all_many (a few bytes of arrays each)


def _lut(pattern: str) -> np.ndarray:
    """The ASCII characters a one-character regular expression (for str) matches, as a lookup table."""
    rx = re.compile(pattern)
    return np.array([rx.fullmatch(chr(c)) is not None for c in range(256)]) & (np.arange(256) < 128)


_D_LUT = _lut(r"\d")
_S_LUT = _lut(r"[\s.\-]")
_BREAK_LUT = np.array([c < 128 and len(("a" + chr(c) + "a").splitlines()) == 2 for c in range(256)])




# one bytes.translate table for the per-character pre-checks of ASCII text: bit 1 a digit (\d), 2 a
# phone separator ([\s.\-]), 4 a line break (str.splitlines), 8 ":", 16 "-", 32 "@", 64 "."
_HINT_BITS = (_D_LUT * 1 | _S_LUT * 2 | _BREAK_LUT * 4).astype(np.uint8)
for _ch, _bit in ((":", 8), ("-", 16), ("@", 32), (".", 64)):
    _HINT_BITS[ord(_ch)] |= _bit
_HINT_TABLE = _HINT_BITS.tobytes()
_BYTES_WITH = {k: np.flatnonzero(_HINT_BITS & k).tolist() for k in (1, 2, 4, 8, 16, 32, 64)}
del _ch, _bit


def _texts_with(raw: bytes, needles: list[str], tstart: np.ndarray, fold: list[bool]) -> list[np.ndarray]:
    """For each needle (of >= 2 characters, no NUL), which texts (laid end to end in ``raw``, NUL
    after each, starting at ``tstart``) hold it, in any case where ``fold`` (the needle lower-case):
    the positions whose first two bytes start some needle, found by one table look-up of every byte
    pair (the pairs at even and at odd offsets read as two aligned uint16 arrays), then narrowed
    needle by needle, byte by byte."""
    enc, table = _pair_table(tuple(needles), tuple(fold))
    longest = max(map(len, enc))
    raw = raw + b"\0" * (longest + 1)                              # reads past the end find NUL
    b = np.frombuffer(raw, dtype=np.uint8)
    cand, cpair = [], []
    for odd in (0, 1):
        pairs = np.frombuffer(raw, dtype="<u2", offset=odd, count=(len(raw) - odd) // 2)
        at = np.flatnonzero(table.take(pairs))
        cand.append(2 * at + odd)
        cpair.append(pairs.take(at))
    cand, cpair = np.concatenate(cand), np.concatenate(cpair)    # in no particular order
    lpair = _LOWER_PAIR.take(cpair) if any(fold) else cpair
    out = []
    for x, f in zip(enc, fold):
        c = cand[(lpair if f else cpair) == x[0] | (x[1] << 8)]
        for k in range(2, len(x)):
            got = b.take(c + k)
            c = c[(ASCII_LOWER.take(got) if f else got) == x[k]]
        hit = np.zeros(len(tstart), dtype=bool)
        hit[np.searchsorted(tstart, c, side="right") - 1] = True
        out.append(hit)
    return out


@functools.lru_cache(maxsize=4)
def _pair_table(needles: tuple, fold: tuple) -> tuple[list[bytes], np.ndarray]:
    """The needles as bytes and the table of the byte pairs that start one (both cases of a folded
    needle's first two letters), made once per set of needles (batches may hold a few texts)."""
    enc = [x.encode("ascii") for x in needles]
    table = np.zeros(1 << 16, dtype=bool)
    for x, f in zip(enc, fold):
        firsts = {x[0], bytes([x[0]]).upper()[0]} if f else {x[0]}
        seconds = {x[1], bytes([x[1]]).upper()[0]} if f else {x[1]}
        table[[p | (q << 8) for p in firsts for q in seconds]] = True
    table.flags.writeable = False
    return enc, table


_LOWER_PAIR = (ASCII_LOWER[np.arange(1 << 16) & 0xFF].astype(np.uint16)
               | (ASCII_LOWER[np.arange(1 << 16) >> 8].astype(np.uint16) << 8))   # both bytes lower-cased


def _ascii_hints(texts: list[str]) -> list[tuple]:
    """find_all's pre-checks for ASCII texts, on all of them at once (each text followed by NUL,
    which no pre-check's pattern holds): per-character masks (digits, digit-separator-digit, colons,
    dashes, line breaks: bits of one translated copy of the bytes) reduced per text, substrings by
    :func:`_texts_with`."""
    n = len(texts)
    lens = np.fromiter(map(len, texts), np.int64, n)
    raw = "\0".join([*texts, ""]).encode("ascii")
    h = np.frombuffer(raw.translate(_HINT_TABLE), dtype=np.uint8)
    tstart = np.cumsum(lens + 1) - lens - 1
    nonempty = lens > 0

    def any_in(mask: np.ndarray) -> np.ndarray:      # mask[p]: a match starts at p
        return np.logical_or.reduceat(mask, tstart) & nonempty

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(tstart, np.flatnonzero(mask), side="right") - 1, minlength=n)

    none = np.zeros(n, dtype=bool)

    def bit(k: int) -> np.ndarray:
        return (h & k).view(bool) if k == 1 else (h & k) != 0

    def absent(k: int) -> bool:          # no byte of the batch has bit k (one memchr per byte value)
        return not any(bytes([c]) in raw for c in _BYTES_WITH[k])

    d = bit(1)
    phone = np.zeros(len(h), dtype=bool)
    phone[:-2] = d[:-2] & d[2:] & ((h[1:-1] & 2) != 0)   # a match of \d[\s.\-]\d starts here
    colons = np.zeros(n, np.int64) if absent(8) else count(bit(8))
    at = none if absent(32) else any_in(bit(32))
    dot = none if absent(64) else any_in(bit(64))
    dashes = np.zeros(n, np.int64) if absent(16) else count(bit(16))
    breaks = np.zeros(n, np.int64) if absent(4) else count(bit(4))
    exact = ["::", "://", "www.", "WWW.", "-----BEGIN "] + list(_KEY_MARKERS)
    folded = list(_ASSIGN_MARKERS) + list(LICENSE_PHRASES)          # lower-case, found in any case
    v6, url1, url2, url3, pem, *rest = _texts_with(raw, exact + folded, tstart,
                                                   [False] * len(exact) + [True] * len(folded))
    key, got = rest[:len(_KEY_MARKERS)], rest[len(_KEY_MARKERS):]
    assign = np.logical_or.reduce(got[:len(_ASSIGN_MARKERS)])
    lic = np.full(n, -1, dtype=np.int64)
    for i in range(len(LICENSE_PHRASES) - 1, -1, -1):   # the first phrase (in LICENSE_PHRASES' order) wins
        lic[got[len(_ASSIGN_MARKERS) + i]] = i
    return list(zip(at.tolist(), any_in(d).tolist(), any_in(phone).tolist(), dot.tolist(),
                    (v6 | (colons >= 7)).tolist(), (url1 | url2 | url3).tolist(), (dashes >= 4).tolist(),
                    np.logical_or.reduce(key).tolist(), assign.tolist(), pem.tolist(),
                    (breaks >= 2).tolist(), [LICENSE_PHRASES[i] if i >= 0 else None for i in lic.tolist()]))


def find_all_many(texts: list[str]) -> list[dict[str, list[str]]]:
    """``[find_all(t) for t in texts]``, with the pre-checks of ASCII texts computed for all of
    them at once (:func:`_ascii_hints`); each regular expression then runs only on the texts it may
    match. (A text of fewer than three line breaks cannot hold three lines: no code check.)"""
    n = len(texts)
    out: list = [None] * n
    is_ascii = np.fromiter(map(str.isascii, texts), bool, n)
    for i in np.flatnonzero(~is_ascii).tolist():
        out[i] = find_all(texts[i])
    asc = np.flatnonzero(is_ascii)
    # batches of ASCII texts: each up to the first text whose characters before it (and a NUL
    # each) reach BATCH_CHARS, one text at least
    upto = np.concatenate([[0], np.cumsum(np.fromiter(map(len, texts), np.int64, n)[asc] + 1)])
    ends = np.searchsorted(upto, upto + BATCH_CHARS, side="left").tolist()
    k = 0
    while k < len(asc):
        j = min(len(asc), max(k + 1, ends[k]))
        rows = asc[k:j].tolist()
        batch = [texts[i] for i in rows]
        for i, t, h in zip(rows, batch, _ascii_hints(batch)):
            out[i] = _detect(t, *h)
        k = j
    return out


def redact(text: str) -> str:
    """Mask personal data and secrets in ``text`` (see the module docstring)."""
    if not text:
        return text
    text = PEM.sub("[PEM]", text)
    text = KEY_TOKEN.sub("[KEY]", text)
    text = KEY_ASSIGN.sub(lambda m: m.group("head") + "[KEY]" if _assign_ok(m) else m.group(0), text)
    text = URL_CREDENTIALS.sub(r"\1[CREDENTIALS]@", text)
    text = EMAIL.sub("[EMAIL]", text)
    text = IPV6.sub(lambda m: "[IP]" if m.group(0).count(":") >= 2 else m.group(0), text)
    text = IPV4.sub("[IP]", text)
    text = PHONE.sub(lambda m: "[PHONE]" if _phone_ok(m.group(0)) else m.group(0), text)
    return text
