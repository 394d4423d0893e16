"""The deterministic byte stream the test servers send and the tests check (sha256 chain)."""
import hashlib


def blob(size):
    """size bytes of a repeatable pseudo-random stream."""
    out = bytearray()
    block = hashlib.sha256(b"xvs").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])
