"""Unit tests of tool_server.py's status list reading (no network): the IETF OAuth Token
Status List draft's own examples (section 4.1), every `bits` width, and the refusals.

Run: python3 -m unittest discover -s deploy/examples/agentic/tests
(tests/tests/e2e/example_agentic.rs runs them too.)
"""

import sys
import unittest
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tool_server as ts  # noqa: E402


class StatusAt(unittest.TestCase):
    def test_the_drafts_one_bit_example(self):
        lst = ts.inflate(ts.b64url_decode("eNrbuRgAAhcBXQ"))
        self.assertEqual(lst, bytes([0xB9, 0xA3]))
        self.assertEqual(
            [ts.status_at(lst, 1, i) for i in range(16)],
            [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1],
        )

    def test_the_drafts_two_bit_example(self):
        lst = ts.inflate(ts.b64url_decode("eNo76fITAAPfAgc"))
        self.assertEqual(lst, bytes([0xC9, 0x44, 0xF9]))
        self.assertEqual(
            [ts.status_at(lst, 2, i) for i in range(12)],
            [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3],
        )

    def test_four_and_eight_bits_and_a_large_index(self):
        self.assertEqual([ts.status_at(bytes([0x21]), 4, i) for i in range(2)], [1, 2])
        self.assertEqual(ts.status_at(bytes([0, 0, 7]), 8, 2), 7)
        lst = bytearray(1 << 13)  # 65536 one-bit entries, as a shared list may have
        lst[40000 // 8] |= 1 << (40000 % 8)
        self.assertEqual(ts.status_at(bytes(lst), 1, 40000), 1)
        self.assertEqual(ts.status_at(bytes(lst), 1, 40001), 0)

    def test_refusals(self):
        for bits, idx, lst in [
            (1, 16, bytes(2)),  # beyond the list
            (8, 3, bytes(3)),
            (3, 0, bytes(1)),  # not a width of the draft
            (1, -1, bytes(1)),
            (1, True, bytes(1)),
            (1, "0", bytes(1)),
        ]:
            with self.subTest(bits=bits, idx=idx), self.assertRaises(ValueError):
                ts.status_at(lst, bits, idx)

    def test_inflating_is_bounded(self):
        bomb = zlib.compress(bytes(ts.MAX_LIST_BYTES + 1))
        with self.assertRaises(ValueError):
            ts.inflate(bomb)
        self.assertEqual(len(ts.inflate(zlib.compress(bytes(1000)))), 1000)


class CheckStatus(unittest.TestCase):
    """Claims refused before anything is fetched."""

    def setUp(self):
        self.v = ts.Validator("https://rp.example.org", "tool", cafile=None, max_list_age=1)

    def refused(self, status):
        with self.assertRaises(ts.Refused) as r:
            self.v.check_status({"status": status})
        self.assertEqual(r.exception.status, 401)
        return r.exception.detail

    def test_malformed_status_claims(self):
        for status in [None, "x", {}, {"status_list": {"idx": 0}}, {"status_list": {"uri": "https://rp.example.org/l"}}]:
            with self.subTest(status=status):
                self.assertIn("malformed status claim", self.refused(status))

    def test_a_list_outside_the_issuer(self):
        for uri in ["https://evil.example.org/statuslists/1", "https://rp.example.org.evil/x", "http://rp.example.org/x"]:
            with self.subTest(uri=uri):
                self.assertIn("not served by the issuer", self.refused({"status_list": {"uri": uri, "idx": 0}}))


if __name__ == "__main__":
    unittest.main()
