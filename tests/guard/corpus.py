"""The detector corpus: secrets and personal data in many formats, and near-misses that must pass.

(text, kinds expected). Shared by the precision/recall test and the end-to-end tests, which also
grep every log and database row for the raw values afterwards. Every value here is synthetic
(documented examples, test card numbers, reserved numbers) but shaped exactly like the real thing.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _sluice(body: str) -> str:
    n, out = zlib.crc32(body.encode()), []
    for _ in range(6):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return body + "".join(reversed(out))


SLUICE_KEY = _sluice("slk_prod_" + "Q7wErT9yUi1oPa3sDf5gHj7kLz2xCv")
SLUICE_ADMIN = _sluice("sla_" + "M4nB6vC8xZ0lK2jH4gF6dS8aP1oI3u")


def _body(seed: str, chars: int) -> str:
    """Base64 lines (64 a line) shaped like a key's body: synthetic, from a hash chain."""
    raw, h = b"", seed.encode()
    while len(raw) * 4 < chars * 3 + 4:
        h = hashlib.sha256(h).digest()
        raw += h
    b64 = base64.b64encode(raw).decode()[:chars]
    return "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))


PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
       "aFDrBz9vFqU4yQ==\n-----END RSA PRIVATE KEY-----")

# Every flavour of private key, whole (armor headers and all): each is one private_key finding.
PRIVATE_KEYS: list[str] = [
    PEM,
    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3AA7427DCA06B7B5E436CEE3C2F231BC\n\n"
    f"{_body('rsa-encrypted', 300)}\nc2hvcnQgbGluZQ==\n-----END RSA PRIVATE KEY-----",
    f"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAc{_body('pkcs8-enc', 200)}\n"
    "-----END ENCRYPTED PRIVATE KEY-----",
    f"-----BEGIN DSA PRIVATE KEY-----\n{_body('dsa', 180)}\n-----END DSA PRIVATE KEY-----",
    f"-----BEGIN X9.42 DH PRIVATE KEY-----\n{_body('dh', 120)}\n-----END X9.42 DH PRIVATE KEY-----",
    # OpenSSH's body carries the public key blob inside it: the private key is still one finding
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    f"QyNTUxOQAAACB1Cyke02wm4THvbJFboRjVEM4P62dp3SgHsKfrH83V3wAAAIjTX64p01+u\n{_body('openssh', 140)}\n"
    "-----END OPENSSH PRIVATE KEY-----",
    f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{_body('pgp', 220)}\n=Ab12\n-----END PGP PRIVATE KEY BLOCK-----",
    # as a JSON string carries it, in tool-call arguments
    '{"key": "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIBb' + _body("ec-json", 80).replace("\n", "\\n")
    + '\\n-----END EC PRIVATE KEY-----\\n"}',
]

# Key material that is public by design (real keys and certificates, generated for this corpus):
# none of it is a secret, base64 bodies included.
PUBLIC_KEYS: list[str] = [
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAPw0VTgWngtJXMnuXdYkynz7OqFb4QbKBe8sYJDCL6ko=\n-----END PUBLIC KEY-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEPQWYGWq0j6Tp0yo/DM7qwdZd2Gor\n"
    "iMT6MekQYnBPE8BDJpL89dq9+hQu3S8Qlrs6/0pEaTvUAb75wi9WDgCy5w==\n-----END PUBLIC KEY-----",
    "-----BEGIN RSA PUBLIC KEY-----\nMIIBCgKCAQEAv/JrCRHvv+16InEQRQm/IUW3EGDLtpEHKg/iByjBFxEmR5/RKaox\n"
    "+x8WDLvfjVidlCU3f5rrHs+jkHoGQZ5PcGO4NrR6CYVsIMH1/9tSTcNs1AX/kT4F\n"
    "MDYlRO9bZtHVr9VEmTO2m9sH4/MWVAGOaTF6agor6UxtPDCe4Xo2EMggoleYe/A4\n"
    "NUX1skxKbmDFLRi/yOSics1C7AagH8D0/LQL7aNay4k/Qh4f5yEXFaRR6yXfrXau\n"
    "8c4qSkvNJvLgitEsC4JsVAN0bnmWRtM3MmEQKV2C/rRO7AOubaDvOyQgrRe+7WFr\n"
    "SlMJ+vEwZmEyTpc370ItzX7FpXwie/pPEQIDAQAB\n-----END RSA PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIBgjCCASmgAwIBAgIUYI9t4d00FmVPMWzpYT4AgVHao4AwCgYIKoZIzj0EAwIw\n"
    "FzEVMBMGA1UEAwwMZXhhbXBsZS50ZXN0MB4XDTI2MTIwNzAzMTAwNloXDTM2MTIw\n"
    "NDAzMTAwNlowFzEVMBMGA1UEAwwMZXhhbXBsZS50ZXN0MFkwEwYHKoZIzj0CAQYI\n"
    "KoZIzj0DAQcDQgAEPQWYGWq0j6Tp0yo/DM7qwdZd2GoriMT6MekQYnBPE8BDJpL8\n"
    "9dq9+hQu3S8Qlrs6/0pEaTvUAb75wi9WDgCy56NTMFEwHQYDVR0OBBYEFCulvkjm\n"
    "8VO4QJHEbH1IgRmPUtiuMB8GA1UdIwQYMBaAFCulvkjm8VO4QJHEbH1IgRmPUtiu\n"
    "MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgJrTv7zQWQLYwFoEK\n"
    "QrYdhNijiAjOKQmeSgBY6pgl53ICIHIs/DJxsRuJ6d5yhBcibtutDgS5flWteWrK\nF3ocU8dk\n-----END CERTIFICATE-----",
    "-----BEGIN CERTIFICATE REQUEST-----\r\nMIHRMHkCAQAwFzEVMBMGA1UEAwwMZXhhbXBsZS50ZXN0MFkwEwYHKoZIzj0CAQYI\r\n"
    "KoZIzj0DAQcDQgAEPQWYGWq0j6Tp0yo/DM7qwdZd2GoriMT6MekQYnBPE8BDJpL8\r\n"
    "9dq9+hQu3S8Qlrs6/0pEaTvUAb75wi9WDgCy56AAMAoGCCqGSM49BAMCA0gAMEUC\r\n"
    "IQDYMNUdd7ZJxcEsMPUo1KAJtUdevUqjvgCwO5dT5N+Q6wIgdBi+B5I49EJKj2MR\r\n"
    "zpkbqKfL5evs5Ga6kp7KPYV7TM0=\r\n-----END CERTIFICATE REQUEST-----",
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEaxYjwhYJKwYBBAHaRw8BAQdA8yL++VtydCSR76LnMhUSmyfbMb++lyTElAtV\n"
    "DupUdeK0FVRlc3QgPHRAZXhhbXBsZS50ZXN0PoiQBBMWCAA4FiEEMCoSbQiMlPaS\n"
    "vHWOrV/y5TzVZT8FAmsWI8ICGwMFCwkIBwIGFQoJCAsCBBYCAwECHgECF4AACgkQ\n"
    "rV/y5TzVZT+RQgD9HxlQ1Ij5poEsl4WIlXhRVXpGwxefT45+t5GTv8UhCXYBAPK1\n"
    "tTthh1Y7Fx1W67vhvXkUiDj79V7Gmq85d47W6f0I\n=CjZy\n-----END PGP PUBLIC KEY BLOCK-----",
    "my key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHULKR7TbCbhMe9skVuhGNUQzg/rZ2ndKAewp+sfzdXf jane@laptop.example.com",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDHuZLsHkkg5zmW/2AV+SmtqtnKHXt7ERAviVLFcA0MZ"
    "nOV9l/yezJ7aMfTK2LjJUG8Y9xHtp/S0q9VAjDPF+Y0=",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCsg9l/IiZifE4uVd0bPxiKcBrTAON0mmgFyXIZS4+Lg/YKo7mxvicQ3XKxtKRuU2QT31/VlZcnK6B"
    "ckwb3inljsLeF7CjPpg3bEChxf84Dwh9ZcCt3HXHaeeecXezOHnbtJVFYBupybjPo8m1TN+ZNc1qq5b0pH/0GcjUY4TSjvaZabJtEUe/h/JJvLLT1mhY"
    "zZcOXtp3uAuP7yYGOKwW/G1O1fExHKOXJghbNjCPmJTYlnwKQabDo3WApBTTCur0h5Siu+7f1VO999/7Gs5iKdfqif1V1PfyO5MItpwCoejW5GCIiTxf"
    "df6UsbKIKn5HPABhAPLQHvA6UNq6b4Sj5 deploy@ci",
    "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIDK1btUzSKhYfzDJDlxkBt+V07irETCx2mK89JKo7Ypj"
    "AAAABHNzaDo= yubikey",
    # as a JSON string carries it
    '{"public_key": "-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEAPw0VTgWngtJXMnuXdYkynz7OqFb4QbKBe8sYJDCL6ko=\\n'
    '-----END PUBLIC KEY-----\\n"}',
]

POSITIVE: list[tuple[str, str]] = [
    # secrets: cloud keys
    ("aws key AKIAIOSFODNN7EXAMPLE in the config", "aws_access_key"),
    ("temporary ASIAY34FZKBOKMUTVV7A from sts", "aws_access_key"),
    ("AKIA2OGYBAH6STMMNXNN", "aws_access_key"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key"),
    ('"aws_secret": "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"', "aws_secret_key"),
    ("maps key AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "gcp_api_key"),
    ("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "gcp_api_key"),
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;EndpointSuffix=core.windows.net", "azure_key"),
    ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8=", "azure_key"),
    (PEM, "private_key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----", "private_key"),
    ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----", "private_key"),
    ("-----BEGIN EC PRIVATE KEY----- truncated here", "private_key"),
    # tokens
    ("token eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwiYXVkIjoic2x1aWNlIn0.c2lnbmF0dXJlLXBhcnQtaGVyZQ", "jwt"),
    ("eyJraWQiOiJrMSIsImFsZyI6IkVTMjU2In0.eyJpc3MiOiJzbHVpY2UiLCJleHAiOjE3MDAwMDAwMDB9.MEUCIQDx7pXm3q9vLkT2", "jwt"),
    ("Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc", "bearer_token"),
    ("curl -H 'authorization: bearer abcdefghijklmnopqrstuvwx0123' https://api", "bearer_token"),
    ("BEARER Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA", "bearer_token"),
    ("gh token ghp_16C7e42F292c6912E7710c838347Ae178B4a in ci", "github_token"),
    ("gho_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5", "github_token"),
    ("ghs_0123456789abcdefghijABCDEFGHIJklmnop", "github_token"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab", "github_token"),
    ("slack xoxb-2048-1024-AbCdEfGhIjKlMnOpQrStUv", "slack_token"),
    ("xoxp-123456789012-123456789012-abcdef123456", "slack_token"),
    ("xoxa-2-abcdefghij1234567890", "slack_token"),
    ("OPENAI_API_KEY=sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90", "openai_key"),
    ("sk-T3BlbkFJabcdefghijklmnopqrstuvwxyz012345", "openai_key"),
    ("sk-svcacct-0123456789abcdefghijABCDEFGHIJ_xyz", "openai_key"),
    (f"my gateway key {SLUICE_KEY} leaked", "sluice_key"),
    (f"admin {SLUICE_ADMIN}", "sluice_key"),
    # high-entropy strings
    ("session=Zk3pQ9xLm2Vb7Nc4Rt8Yw1Ae5Sd6Fg0Hj9Kl", "high_entropy"),
    ("secret value: 8hG2kLp9QwE4rT6yU1iO3aS5dF7gH0jKzXcV", "high_entropy"),
    ("api_token: aB3xK9mQ2wE7rT5yU8iO1pL4kJ6hG0fDsA2zX", "high_entropy"),
    ("X-Signature: R2VuZXJhdGVkU2lnbmF0dXJlMTIzNDU2Nzg5MEFCQ0RFRg==", "high_entropy"),
    # cards (test numbers that pass Luhn)
    ("visa 4111 1111 1111 1111 exp 12/30", "card_number"),
    ("card: 4012888888881881", "card_number"),
    ("mastercard 5555-5555-5555-4444", "card_number"),
    ("5105105105105100", "card_number"),
    ("amex 3782 822463 10005", "card_number"),
    ("371449635398431", "card_number"),
    ("discover 6011111111111117", "card_number"),
    ("6011 0009 9013 9424", "card_number"),
    ("jcb 3530111333300000", "card_number"),
    ("mc 2-series 2223003122003222", "card_number"),
    # emails
    ("write to jane.doe@example.com please", "email"),
    ("john+billing@mail.example.co.uk", "email"),
    ("Contact: OPS_TEAM@corp-example.org.", "email"),
    ("x.y.z@sub.domain.example.io", "email"),
    ("<a href='mailto:help@example.net'>help</a>", "email"),
    # phones
    ("call me at +1 415-555-2671", "phone"),
    ("phone (212) 555-0147", "phone"),
    ("tel 415.555.0199 ext", "phone"),
    ("+447911123456", "phone"),
    ("+49 30 12345678", "phone"),
    ("mobile: 650-555-0123", "phone"),
    # IBAN and national identifiers
    ("IBAN GB82 WEST 1234 5698 7654 32", "iban"),
    ("DE89370400440532013000", "iban"),
    ("pay to FR14 2004 1010 0505 0001 3M02 606", "iban"),
    ("NL91ABNA0417164300", "iban"),
    ("ssn 078-05-1120", "us_ssn"),
    ("SSN: 219-09-9999", "us_ssn"),
    ("NI number AB 12 34 56 C", "uk_nino"),
    ("QQ123456C is not valid but JG103759A is", "uk_nino"),
    # private keys of every flavour, and a secret wrapped in a certificate's armor (still a secret)
    *((key, "private_key") for key in PRIVATE_KEYS[1:]),
    ("-----BEGIN CERTIFICATE-----\nAKIAIOSFODNN7EXAMPLE\n-----END CERTIFICATE-----", "aws_access_key"),
]

NEGATIVE: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "Please summarise the meeting notes and list the action items.",
    "Version 1.2.3 was released on 2024-01-15.",
    "The order number is 4111 1111 1111 1112.",  # fails Luhn
    "Invoice 1234567890123456 is due.",  # fails Luhn
    "Ticket 5555-5555-5555-4445 closed.",  # fails Luhn
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # hex: low entropy
    "commit e83c5163316f89bfbde7d9ab23ca2e25604af290",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "AKIA is the prefix AWS uses for access keys.",
    "AKIAIOSFODNN7EXAMPL",  # one character short
    "the sk-learn package and sk-short tokens",
    "Use ghp_ followed by 36 characters for a GitHub token.",
    "xox is a game; so is tic-tac-toe.",
    "eyJ is how base64 of '{\"' begins.",
    "Bearer tokens should never be logged.",
    "bearer short",
    "Email me at jane at example dot com.",
    "The decorator @property makes a getter.",
    "user@localhost has no domain",
    "Room 415 555 is on floor 2.",
    "The year 2024 had 366 days.",
    "Call extension 5550.",
    "Coordinates 37.7749, -122.4194",
    "IP address 192.168.100.200 is private.",
    "ISBN 978-3-16-148410-0",
    "Price: $1,234,567.89",
    "GB82 is a prefix but not an IBAN.",
    "DE89370400440532013001",  # fails mod 97
    "ssn 000-12-3456",  # never issued
    "ssn 666-12-3456",
    "route 123-45-678 is a part number",
    "internationalization and localization are long words",
    "supercalifragilisticexpialidociousness is long but not random",
    "/usr/local/lib/python3.11/site-packages/sluice/guard",
    "https://example.com/path/to/resource?query=value&other=thing",
    "ThisIsAVeryLongCamelCaseIdentifierNameForTesting",
    "snake_case_identifier_that_is_rather_long_indeed",
    "slk_prod_ is the prefix of a sluice data key; sla_ of a control key",
    "-----BEGIN PUBLIC KEY----- is fine to share",
    "-----BEGIN CERTIFICATE-----",
    "The function returns None when the list is empty.",
    "Meeting at 10:30 on 2024-03-05 in room B12.",
    "Temperature 23.5C, humidity 45%.",
    "1234",
    "Tracking 1Z999AA10123456784",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "0000000000000000",
    "Count: 12345678",
    "See RFC 7519 section 4.1.",
    "password123 is a bad password",
    *PUBLIC_KEYS,
]

