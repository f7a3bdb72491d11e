"""Sensitive-data detectors for the hot path: one combined regex, then a checksum where one exists.

Each kind is a named group of one compiled pattern, so a text is scanned once whatever the
number of kinds. A regex hit that fails its validator (Luhn for cards, mod-97 for IBANs, CRC32
for sluice keys, entropy for long random-looking strings) is not a finding: that is what keeps
near-misses (order numbers, hashes, version strings) untouched. Key material that is public by
design (PEM public keys, certificates, SSH public keys) is no secret: a finding of a kind that
random base64 can match by chance is dropped inside one.
"""

from __future__ import annotations

import binascii
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable

import msgspec

_NL = r"[ \t]*(?:\r?\n|(?:\\+r)?\\+n)"  # a line break, as typed or escaped in a JSON string (or a string in one)
_PRIVATE_LABEL = r"(?:[A-Z0-9.]+ )*PRIVATE KEY(?: BLOCK)?"  # RSA, EC, DSA, OPENSSH, ENCRYPTED, X9.42 DH, PGP ...
# kind -> pattern. Secrets first: where two kinds overlap, the earlier alternative wins.
PATTERNS: dict[str, str] = {
    # armor headers (Proc-Type: 4,ENCRYPTED, DEK-Info, PGP's Version) are part of the key; then the
    # body runs to its END line (or one still arriving at the text's end: a stream holds it back),
    # or to the first character no key body has, or to the text's end
    "private_key": rf"-----BEGIN {_PRIVATE_LABEL}-----(?>(?:{_NL}[A-Z][A-Za-z-]{{0,31}}: [^\r\n\\]{{0,256}})*)"
                   r"[A-Za-z0-9+/=:\s\\-]{0,16384}?"
                   rf"(?:-----END {_PRIVATE_LABEL}-----|-----END [A-Z0-9. ]*-{{0,5}}\Z|(?=[^A-Za-z0-9+/=:\s\\-])|\Z)",
    "aws_access_key": r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
    "aws_secret_key": r"(?i:aws_?secret_?access_?key|aws_?secret)\\*[\"']?\s*[:=]\s*\\*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
    "gcp_api_key": r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])",
    "azure_key": r"(?i:AccountKey|SharedAccessKey)=[A-Za-z0-9+/]{40,}={0,2}",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})\b",
    "slack_token": r"\bxox[baprse]-[A-Za-z0-9\-]{10,}",
    "openai_key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{32,}",
    "sluice_key": r"\bsl[ka]_(?:(?:dev|prod)_)?[0-9A-Za-z]{36}\b",
    "bearer_token": r"(?i:\bbearer\s+)[A-Za-z0-9\-._~+/]{20,}=*",
    "card_number": r"\b(?:\d[ \-]?){12,18}\d\b",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
    "us_ssn": r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b",
    "uk_nino": r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
    "email": r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b",
    "phone": r"(?<![\w+])(?:\+[1-9]\d{0,2}[ .\-]?)?\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}\b|(?<![\w+])\+[1-9]\d{0,2}(?:[ .\-]?\d{2,8}){1,4}\b",
    "high_entropy": r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,256}={0,2}(?![A-Za-z0-9+/_\-])",
}
SECRET_KINDS = frozenset({"private_key", "aws_access_key", "aws_secret_key", "gcp_api_key", "azure_key", "jwt",
                          "github_token", "slack_token", "openai_key", "sluice_key", "bearer_token", "high_entropy"})
PII_KINDS = frozenset(PATTERNS) - SECRET_KINDS
KINDS = tuple(PATTERNS)
# Kinds that random base64 matches now and then: inside public key material they are no finding.
# Kinds with a vendor prefix are still found there (a secret wrapped in a certificate is a secret).
CHANCE_KINDS = PII_KINDS | {"high_entropy"}
_PUBLIC_LABEL = (r"(?:RSA |EC |DSA )?PUBLIC KEY|(?:TRUSTED |X509 )?CERTIFICATE|(?:NEW )?CERTIFICATE REQUEST"
                 r"|X509 CRL|PKCS7|CMS|PGP PUBLIC KEY BLOCK")
# Key material public by design, found like a kind but never a finding: it shields what lies inside.
PUBLIC_PATTERNS: dict[str, str] = {
    # a whole block: BEGIN, armor headers (PGP's), lines of base64 only, then the END of the same label
    "public_pem": rf"-----BEGIN (?P<label>{_PUBLIC_LABEL})-----(?>(?:{_NL}[A-Z][A-Za-z-]{{0,31}}: [^\r\n\\]{{0,256}})*)"
                  r"[A-Za-z0-9+/=\s]*+(?:\\+[rn][A-Za-z0-9+/=\s]*+)*+-----END (?P=label)-----",
    # an OpenSSH public key, ``[type] blob [comment]`` (the comment only after a type): the blob
    # names its own type (checked below), so a blob streamed apart from its type is still known
    "public_ssh": r"(?<![A-Za-z0-9+/])(?P<type>(?:sk-)?(?:ssh|ecdsa)-[a-z0-9-]{2,40}(?:@openssh\.com)?[ \t]+)?"
                  r"(?P<blob>AAAA[A-Za-z0-9+/]{16,16384}={0,3})(?![A-Za-z0-9+/=])(?(type)(?:[ \t]+\S{1,256})?)",
}
_OPEN_PUBLIC = re.compile(rf"-----BEGIN (?P<label>{_PUBLIC_LABEL})-----")
_PUBLIC_BLOCK_MAX = 16384  # a public block still arriving is waited for up to this long


def open_public_block(text: str) -> int:
    """Where a public PEM block begins whose END has not arrived yet (a stream still sending it), or -1:
    until it is whole, its base64 lines look like secrets, so a stream holds it back instead."""
    at = -1
    for m in _OPEN_PUBLIC.finditer(text, max(0, len(text) - _PUBLIC_BLOCK_MAX)):
        if f"-----END {m.group('label')}-----" not in text[m.end():]:
            return m.start()
    return at


_WHOLE_PUBLIC = re.compile(PUBLIC_PATTERNS["public_pem"])


def public_end(text: str) -> int:
    """Where the last whole public PEM block in ``text`` ends, or 0: what a stream has seen whole and
    clean, so a later look at part of it (its last line, without the BEGIN) does not mistake it."""
    if "-----END" not in text:
        return 0
    end = 0
    for m in _WHOLE_PUBLIC.finditer(text):
        end = m.end()
    return end


ENTROPY_BITS = 4.3  # per char; random base62 of 32+ chars scores ~4.6+, hex digests at most 4.0


class Finding(msgspec.Struct, frozen=True, gc=False):
    """One detected span of a text."""

    kind: str
    start: int
    end: int


def luhn(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    # issuer prefixes: Visa, Mastercard (51-55, 2221-2720), Amex, Discover/UnionPay, JCB, Diners
    return 13 <= len(digits) <= 19 and digits[0] in "345623" and luhn(digits)


def _iban(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _sluice_key(text: str) -> bool:
    """sluice's own key format carries a CRC32 (base62, 6 chars) of the rest: a typo is no key."""
    body, check = text[:-6], text[-6:]
    n, out = zlib.crc32(body.encode()), []
    for _ in range(6):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(reversed(out)) == check


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _high_entropy(text: str) -> bool:
    s = text.rstrip("=")
    if not (any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s)):
        return False
    return entropy(s) >= ENTROPY_BITS


def _phone(text: str) -> bool:
    return sum(c.isdigit() for c in text) >= 10


VALIDATORS: dict[str, Callable[[str], bool]] = {
    "card_number": _card, "iban": _iban, "sluice_key": _sluice_key, "high_entropy": _high_entropy, "phone": _phone,
}
_SSH_TYPE = re.compile(rb"(?:sk-)?(?:ssh|ecdsa)-[a-z0-9-]{2,40}(?:@openssh\.com)?")


def _ssh_blob(m: re.Match[str]) -> bool:
    """An SSH public key blob begins with its key type, length-prefixed (RFC 4253 6.6)."""
    blob = m.group("blob")
    try:
        n = int.from_bytes(binascii.a2b_base64(blob[:8])[:4], "big")
        need = -(-(4 + n) // 3) * 4  # base64 characters that hold the length and the type
        if not 7 <= n <= 60 or len(blob) < need:
            return False
        raw = binascii.a2b_base64(blob[:need])
    except binascii.Error:
        return False
    return _SSH_TYPE.fullmatch(raw[4:4 + n]) is not None


_PUBLIC_CHECKS: dict[str, Callable[[re.Match[str]], bool]] = {"public_ssh": _ssh_blob}
# Gates: a kind's regex runs only when its cheap gate passes (a literal it must contain, or a small
# scan). Prose with no digits, no '@' and no token-like literal costs a few substring checks.
_LITERALS: dict[str, tuple[str, ...]] = {
    "private_key": ("-----BEGIN",), "aws_access_key": ("AKIA", "ASIA", "ABIA", "ACCA"),
    "aws_secret_key": ("ecret", "ECRET"), "gcp_api_key": ("AIza",), "azure_key": ("Key=",), "jwt": ("eyJ",),
    "github_token": ("gho_", "ghp_", "ghu_", "ghs_", "ghr_", "github_pat_"), "slack_token": ("xox",),
    "openai_key": ("sk-",), "sluice_key": ("slk_", "sla_"), "bearer_token": ("earer", "EARER"), "email": ("@",),
}
_PUBLIC_LITERALS = {"public_pem": ("-----BEGIN",), "public_ssh": ("AAAA",)}
_DIGIT_RUN = re.compile(r"\d[\d \-().]{7,}\d")  # cards, phones, SSNs
_COUNTRY_DIGITS = re.compile(r"[A-Z]{2} ?\d\d")  # IBANs, national insurance numbers
_DIGIT = re.compile(r"\d")
_SCANS = {"card_number": _DIGIT_RUN, "phone": _DIGIT_RUN, "us_ssn": _DIGIT_RUN, "iban": _COUNTRY_DIGITS,
          "uk_nino": _COUNTRY_DIGITS}
# How far around a gate's hit its kinds may reach: (chars before, chars after).
_REACH = {_DIGIT_RUN: (4, 1), _COUNTRY_DIGITS: (1, 48)}
_PRIORITY = {k: i for i, k in enumerate(PATTERNS)}


def mask_for(kind: str) -> str:
    """What replaces a finding: names the kind, holds nothing of the value."""
    return f"[REDACTED:{kind}]"


class Detector:
    """The compiled detectors of some kinds: ``find`` spans, ``mask`` them."""

    __slots__ = ("kinds", "_scanned", "_validators", "_entropy", "_triggers", "_by_trigger")

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        wanted = set(kinds)
        unknown = wanted - set(KINDS)
        if unknown:
            raise ValueError(f"unknown detector kinds: {', '.join(sorted(unknown))}")
        self.kinds = tuple(k for k in KINDS if k in wanted)
        literal = [(_LITERALS[k], k, re.compile(PATTERNS[k])) for k in self.kinds if k in _LITERALS]
        if CHANCE_KINDS & wanted:  # public key material matters only to kinds it could shield
            literal += [(lits, k, re.compile(PUBLIC_PATTERNS[k])) for k, lits in _PUBLIC_LITERALS.items()]
        # one scan for every literal trigger, then only the kinds whose trigger occurred
        by_trigger: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
        for lits, k, pat in literal:
            for lit in lits:
                by_trigger.setdefault(lit, []).append((k, pat))
        self._by_trigger = {lit: tuple(kps) for lit, kps in by_trigger.items()}
        self._triggers = re.compile("|".join(re.escape(t) for t in sorted(self._by_trigger, key=len, reverse=True))) \
            if self._by_trigger else None
        scans: dict[re.Pattern[str], list[tuple[str, re.Pattern[str]]]] = {}
        for k in self.kinds:
            if k in _SCANS:
                scans.setdefault(_SCANS[k], []).append((k, re.compile(PATTERNS[k])))
        self._scanned = list(scans.items())
        self._validators = {k: VALIDATORS[k] for k in self.kinds if k in VALIDATORS}
        self._entropy = re.compile(PATTERNS["high_entropy"]) if "high_entropy" in wanted else None

    def find(self, text: str) -> list[Finding]:
        """The validated findings in ``text``, in order, non-overlapping (secrets win ties)."""
        hits: list[tuple[int, int, int, str]] = []
        public: list[tuple[int, int]] = []
        if self._triggers is not None:
            triggered = self._triggers.findall(text)
            if triggered:
                by_trigger = self._by_trigger
                for kind, pattern in {kp for t in set(triggered) for kp in by_trigger[t]}:
                    if kind in PUBLIC_PATTERNS:
                        check = _PUBLIC_CHECKS.get(kind)
                        public.extend(m.span() for m in pattern.finditer(text) if check is None or check(m))
                    else:
                        hits.extend((m.start(), _PRIORITY[kind], m.end(), kind) for m in pattern.finditer(text))
        if self._scanned and _DIGIT.search(text) is not None:  # every scanned kind needs a digit
            for gate, kinds in self._scanned:
                before, after = _REACH[gate]
                for g in gate.finditer(text):  # the kinds run only around each candidate
                    lo, hi = max(g.start() - before, 0), g.end() + after
                    for kind, pattern in kinds:
                        hits.extend((m.start(), _PRIORITY[kind], m.end(), kind) for m in pattern.finditer(text, lo, hi))
        # a long unbroken run is rare in prose: str.split in C is the cheapest way to rule it out (and a text shorter
        # than the run a match needs, such as a key or a short tool result, needs no split at all)
        if self._entropy is not None and len(text) >= 32 and max(map(len, text.split()), default=0) >= 32:
            hits.extend((m.start(), _PRIORITY["high_entropy"], m.end(), "high_entropy")
                        for m in self._entropy.finditer(text))
        if not hits:
            return []
        hits = sorted(set(hits))
        if public:
            hits = [h for h in hits if h[3] not in CHANCE_KINDS or not any(a <= h[0] and h[2] <= b for a, b in public)]
        out: list[Finding] = []
        validators = self._validators
        at = 0
        for start, _, end, kind in hits:
            if start < at:
                continue
            check = validators.get(kind)
            if check is not None and not check(text[start:end]):
                continue
            out.append(Finding(kind, start, end))
            at = end
        return out

    def find_json(self, text: str) -> list[Finding]:
        """The findings in JSON text (tool-call arguments), at their places in ``text``: an escape
        like ``\\n`` reads as the whitespace it stands for, so a value right after one is still found."""
        return self.find(_JSON_ESCAPE.sub(_unescaped, text) if "\\" in text else text)

    def mask(self, text: str, findings: list[Finding] | None = None) -> str:
        """``text`` with every finding replaced by its mask."""
        found = self.find(text) if findings is None else findings
        return masked_text(text, found) if found else text


# an escape in a JSON string, and what it reads as for the detectors: the same length (so findings
# keep their places), whitespace where it stands for whitespace; an escaped \\ or quote is kept
_JSON_ESCAPE = re.compile(r"\\[\s\S]")
_AS_SPACE = {"\\n": " \n", "\\r": " \r", "\\t": "  ", "\\b": "  ", "\\f": "  "}


def _unescaped(m: re.Match[str]) -> str:
    return _AS_SPACE.get(m.group(), m.group())


def masked_text(text: str, found: list[Finding]) -> str:
    """``text`` with each finding (in order, not overlapping) replaced by its kind's mask."""
    parts, at = [], 0
    for f in found:
        parts.append(text[at:f.start])
        parts.append(mask_for(f.kind))
        at = f.end
    parts.append(text[at:])
    return "".join(parts)


def masked_pieces(pieces: list[str], found: list[Finding]) -> list[str]:
    """Pieces whose joined text held ``found``: each with its share of every finding replaced by the
    finding's mask, so a finding split across pieces is masked in each piece it spans."""
    text = "".join(pieces)
    out, lo, i = [], 0, 0
    for piece in pieces:
        hi = lo + len(piece)
        while i < len(found) and found[i].end <= lo:
            i += 1
        out.append(_share(text, lo, hi, found, i) if piece and i < len(found) and found[i].start < hi else piece)
        lo = hi
    return out


_JSON_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
_ESCAPE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|.)")


def masked_json(text: str, found: list[Finding]) -> str:
    """``text``, a JSON document, with each finding masked inside the strings it spans (a number it
    spans becomes its mask as a string), so the document stays JSON; text that is no JSON is masked plainly."""
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return masked_text(text, found)
    n = len(found)
    out, at, i, covered = [], 0, 0, 0
    for m in _JSON_TOKEN.finditer(text):
        lo, hi = m.span()
        while i < n and found[i].end <= lo:
            if i >= covered:  # a finding in no string or number (none of ours can be): mask plainly
                return masked_text(text, found)
            i += 1
        if i == n:
            break
        if found[i].start >= hi:
            continue
        out.append(text[at:lo])
        if m.group(1) is None:  # a number
            out.append(f'"{mask_for(found[i].kind)}"')
        else:
            out.append('"' + _share(text, lo + 1, hi - 1, found, i, "\\" in m.group(1)) + '"')
        while covered < n and found[covered].start < hi:
            covered += 1
        at = hi
    if covered < n:
        return masked_text(text, found)
    out.append(text[at:])
    return "".join(out)


def _share(text: str, lo: int, hi: int, found: list[Finding], i: int, escaped: bool = False) -> str:
    """``text[lo:hi]`` with the part of each finding from ``found[i]`` on that falls in it masked;
    ``escaped``: a JSON string's inside, where a cut never splits an escape sequence (a finding that
    begins or ends inside one, like ``n`` of ``\\n``, took a character of the JSON, not of the value)."""
    escapes = [m.span() for m in _ESCAPE.finditer(text, lo, hi)] if escaped else ()
    out, at = [], lo
    for f in found[i:]:
        if f.start >= hi:
            break
        s, e = max(f.start, lo, at), min(f.end, hi)
        for a, b in escapes:
            if a < s < b:
                s = b
            if a < e < b:
                e = a
        e = max(e, s)
        out.append(text[at:s])
        out.append(mask_for(f.kind))
        at = max(at, e)
    out.append(text[at:hi])
    return "".join(out)
