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

import re

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
    out: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    # cheap pre-checks skip the regular expressions that cannot match (same results, faster)
    if "@" in text:
        out["emails"] = EMAIL.findall(text)
    digits = _DIGIT.search(text) is not None
    if digits:
        if _PHONE_HINT.search(text) is not None:
            out["phone_numbers"] = [m.group(0) for m in PHONE.finditer(text) if _phone_ok(m.group(0))]
        if "." in text:
            out["ip_addresses"] = IPV4.findall(text)
    if "::" in text or text.count(":") >= 7:
        out["ip_addresses"] += [m for m in IPV6.findall(text) if m.count(":") >= 2]
    if "://" in text or "www." in text or "WWW." in text:
        out["urls"] = URL.findall(text)
    if text.count("-") >= 4:
        out["uuids"] = UUID.findall(text)
    if any(k in text for k in _KEY_MARKERS):
        out["keys"] = KEY_TOKEN.findall(text)
    low = text.lower()
    if any(k in low for k in _ASSIGN_MARKERS):
        out["keys"] += [m.group(0) for m in KEY_ASSIGN.finditer(text) if _assign_ok(m)]
    if "-----BEGIN " in text:
        out["keys"] += [m.group(0)[:40] for m in PEM.finditer(text)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 3 and sum(1 for ln in lines if CODE_LINE.search(ln)) >= 0.3 * len(lines):
        out["code"] = ["code"]
    lic = [p for p in LICENSE_PHRASES if p in low]
    if lic:
        out["license_text"] = [lic[0]]
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
