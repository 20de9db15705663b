"""web/qr.js, the UI's own QR encoder, against segno (an independent implementation) module by module."""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import Fleet

if TYPE_CHECKING:
    from playwright.sync_api import Page

segno = pytest.importorskip("segno", reason="the QR check compares with segno (pip install '.[test]')")

# Byte capacity of versions 1..20 at level M (ISO/IEC 18004 table 7).
CAPACITY_M = [14, 26, 42, 62, 84, 106, 122, 152, 180, 213, 251, 287, 331, 362, 412, 450, 504, 560, 624, 666]


def texts() -> list[str]:
    """The largest text of each version: every data bit is used, so no pad codeword is involved.

    (Below capacity segno pads differently from the standard: when the data ends on a codeword
    boundary it still adds a 0x00 byte before the 0xEC/0x11 pad codewords. Both decode the same,
    but the matrices differ, so those sizes are checked for version choice and shape only.)
    """
    rnd = random.Random(18004)
    alphabet = string.ascii_letters + string.digits + " -_./:'|=+"
    return ["".join(rnd.choice(alphabet) for _ in range(cap)) for cap in CAPACITY_M]


def test_qr_matches_an_independent_encoder(anon_page: Page, fleet: Fleet) -> None:
    page = anon_page
    page.goto(fleet.server.url + "/")
    cases = texts()
    got: list[Any] = page.evaluate("""async (texts) => {
        const {qrEncode} = await import('./qr.js');
        return texts.map((t) => qrEncode(t));
    }""", cases)
    versions = set()
    for text, q in zip(cases, got, strict=True):
        ref = segno.make(text, error="m", mode="byte", boost_error=False, micro=False)
        assert q["version"] == ref.version, f"{len(text)} bytes: version {q['version']}, segno {ref.version}"
        forced = segno.make(text, error="m", mode="byte", boost_error=False, micro=False, version=q["version"],
                            mask=q["mask"])
        assert [list(row) for row in forced.matrix] == q["modules"], f"{len(text)} bytes, version {q['version']}"
        versions.add(q["version"])
    assert versions == set(range(1, 21))
    # Any size: the smallest version that holds it, as segno picks, and a square of the right size.
    for n in (1, 6, 40, 117, 330, 500, 666):
        q = page.evaluate("async (n) => (await import('./qr.js')).qrEncode('y'.repeat(n))", n)
        ref = segno.make("y" * n, error="m", mode="byte", boost_error=False, micro=False)
        assert (q["version"], q["size"], len(q["modules"])) == (ref.version, 17 + 4 * ref.version, 17 + 4 * ref.version)
    too_long = page.evaluate("async () => (await import('./qr.js')).qrEncode('x'.repeat(667))")
    assert too_long is None
