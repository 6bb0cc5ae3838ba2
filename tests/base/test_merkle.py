"""RFC 6962 Merkle tree (CometBFT layout): roots, inclusion proofs, tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifer.base import encoding
from cifer.base.crypto import merkle
from cifer.base.crypto.merkle import EMPTY_ROOT, MerkleProof, prove, root


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------- independent reference
#
# Built bottom-up, level by level: pair adjacent nodes and promote a lone last node
# unchanged. This is a different algorithm from the recursive largest-power-of-two split in
# the code under test, but defines the same tree (RFC 6962 section 2.1).


def ref_levels(leaves: list[bytes]) -> list[list[bytes]]:
    level = [H(b"\x00" + x) for x in leaves]
    levels = [level]
    while len(level) > 1:
        nxt = [H(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        levels.append(level)
    return levels


def ref_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return H(b"")
    return ref_levels(leaves)[-1][0]


def ref_path(leaves: list[bytes], index: int) -> list[tuple[str, bytes]]:
    """Audit path bottom-up as (side of sibling, sibling hash); promoted levels are skipped."""
    out = []
    for level in ref_levels(leaves)[:-1]:
        sib = index ^ 1
        if sib < len(level):
            out.append(("left" if sib < index else "right", level[sib]))
        index //= 2
    return out


def ref_sides(total: int, index: int) -> list[str]:
    return [side for side, _ in ref_path([b""] * total, index)]


def ref_verify(leaf: bytes, path: list[tuple[str, bytes]]) -> bytes:
    h = H(b"\x00" + leaf)
    for side, sib in path:
        h = H(b"\x01" + sib + h) if side == "left" else H(b"\x01" + h + sib)
    return h


def leaves_of(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


# ---------------------------------------------------------------- known answers

# certificate-transparency merkle_tree_test.cc: inputs and SHA-256 roots for sizes 1..8.
CT_INPUTS = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657"]
CT_INPUTS.append("606162636465666768696a6b6c6d6e6f")
CT_LEAVES = [bytes.fromhex(h) for h in CT_INPUTS]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_rfc6962_hasher_vectors() -> None:
    # transparency-dev/merkle rfc6962_test.go (also CometBFT's rfc6962 tests).
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert merkle.leaf_hash(b"").hex() == CT_ROOTS[0]
    assert (
        merkle.leaf_hash(b"L123456").hex()
        == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert (
        merkle.inner_hash(b"N123", b"N456").hex()
        == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("n", range(1, 9))
def test_certificate_transparency_roots(n: int) -> None:
    assert root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]
    assert ref_root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]  # the reference is right too


def test_known_structure() -> None:
    l0, l1, l2, l3, l4 = (H(b"\x00" + x) for x in leaves_of(5))

    def node(a: bytes, b: bytes) -> bytes:
        return H(b"\x01" + a + b)

    lv = leaves_of(5)
    assert root(lv[:1]) == l0
    assert root(lv[:2]) == node(l0, l1)
    assert root(lv[:3]) == node(node(l0, l1), l2)
    assert root(lv[:4]) == node(node(l0, l1), node(l2, l3))
    assert root(lv[:5]) == node(node(node(l0, l1), node(l2, l3)), l4)
    # Aunts are bottom-up (CometBFT order).
    assert prove(lv[:4], 0).aunts == [l1, node(l2, l3)]
    assert prove(lv[:5], 4).aunts == [node(node(l0, l1), node(l2, l3))]
    assert prove(lv[:5], 2).aunts == [l3, node(l0, l1), l4]
    assert prove(lv[:3], 2).aunts == [node(l0, l1)]


def test_split_is_largest_power_of_two_below_n() -> None:
    for n in range(2, 300):
        k = merkle._split(n)
        assert k < n <= 2 * k
        assert k & (k - 1) == 0


# ---------------------------------------------------------------- roots vs reference


@pytest.mark.parametrize("n", range(0, 70))
def test_root_matches_reference(n: int) -> None:
    assert root(leaves_of(n)) == ref_root(leaves_of(n))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=40))
def test_root_matches_reference_random(leaves: list[bytes]) -> None:
    assert root(leaves) == ref_root(leaves)


def test_root_depends_on_order_count_and_content() -> None:
    lv = leaves_of(6)
    assert root(lv) != root(lv[::-1])
    assert root(lv) != root(lv[:-1])
    assert root(lv) != root([*lv, b""])
    assert root(lv) != root([*lv[:-1], lv[-1] + b"x"])


def test_leaves_and_inner_nodes_are_domain_separated() -> None:
    a, b = b"a", b"b"
    la, lb = merkle.leaf_hash(a), merkle.leaf_hash(b)
    # A 64-byte leaf equal to the two child hashes does not collide with the 2-leaf tree.
    assert root([la + lb]) != root([a, b])
    assert merkle.leaf_hash(la + lb) != merkle.inner_hash(la, lb)
    # The inner node cannot be proven as a leaf of the tree either.
    p = prove([a, b], 0)
    assert not p.verify(root([a, b]), la + lb)


# ---------------------------------------------------------------- proofs


@pytest.mark.parametrize("n", range(1, 40))
def test_every_proof_verifies_and_matches_reference_path(n: int) -> None:
    lv = leaves_of(n)
    r = root(lv)
    for i in range(n):
        p = prove(lv, i)
        assert (p.total, p.index) == (n, i)
        assert p.leaf_hash == merkle.leaf_hash(lv[i])
        path = ref_path(lv, i)
        assert p.aunts == [h for _, h in path]
        assert ref_verify(lv[i], path) == r
        assert p.compute_root() == r
        assert p.verify(r, lv[i])


def test_single_leaf_proof_has_no_aunts() -> None:
    p = prove([b"only"], 0)
    assert p.aunts == []
    assert p.verify(root([b"only"]), b"only")


@pytest.mark.parametrize("n", [0, 1, 5])
def test_prove_out_of_range(n: int) -> None:
    for i in (-1, n, n + 1):
        with pytest.raises(IndexError):
            prove(leaves_of(n), i)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_tampered_aunt_fails(n: int) -> None:
    lv = leaves_of(n)
    r = root(lv)
    for i in range(n):
        p = prove(lv, i)
        for j in range(len(p.aunts)):
            aunts = list(p.aunts)
            aunts[j] = flip(aunts[j])
            bad = MerkleProof(p.total, p.index, p.leaf_hash, aunts)
            assert not bad.verify(r, lv[i])


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_missing_extra_or_reordered_aunts_fail(n: int) -> None:
    lv = leaves_of(n)
    r = root(lv)
    for i in range(n):
        p = prove(lv, i)
        variants = [
            list(p.aunts[:-1]),
            list(p.aunts[1:]),
            [*p.aunts, p.aunts[-1]],
            [p.aunts[0], *p.aunts],
            [H(b"x"), *p.aunts],
        ]
        if len(p.aunts) > 1 and p.aunts[0] != p.aunts[-1]:
            variants.append(list(reversed(p.aunts)))
        for aunts in variants:
            bad = MerkleProof(p.total, p.index, p.leaf_hash, aunts)
            assert not bad.verify(r, lv[i])
        with pytest.raises(ValueError):
            MerkleProof(p.total, p.index, p.leaf_hash, [*p.aunts, H(b"x")]).compute_root()


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8, 13])
def test_tampered_index_fails(n: int) -> None:
    lv = leaves_of(n)
    r = root(lv)
    for i in range(n):
        p = prove(lv, i)
        for j in [*range(-1, n + 2)]:
            if j == i:
                continue
            bad = MerkleProof(p.total, j, p.leaf_hash, p.aunts)
            assert not bad.verify(r, lv[i]), (n, i, j)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16])
def test_tampered_total_fails_unless_the_path_is_identical(n: int) -> None:
    # The proof format (like CometBFT's) does not hash ``total`` into the root: a total that
    # gives the same sequence of left/right steps recomputes the same root. Any total that
    # changes the path, or leaves the index out of range, must fail.
    lv = leaves_of(n)
    r = root(lv)
    for i in range(n):
        p = prove(lv, i)
        for t in range(-1, 2 * n + 3):
            if t == n:
                continue
            bad = MerkleProof(t, i, p.leaf_hash, p.aunts)
            same_path = 0 <= i < t and ref_sides(t, i) == ref_sides(n, i)
            assert bad.verify(r, lv[i]) == same_path, (n, i, t)


def test_total_ambiguity_example() -> None:
    # Documented limitation: a proof for leaf 0 of 4 also "verifies" claiming 3 leaves.
    lv = leaves_of(4)
    p = prove(lv, 0)
    assert MerkleProof(3, 0, p.leaf_hash, p.aunts).verify(root(lv), lv[0])
    # But not for leaf 3, which does not exist in a 3-leaf tree.
    p3 = prove(lv, 3)
    assert not MerkleProof(3, 3, p3.leaf_hash, p3.aunts).verify(root(lv), lv[3])


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_tampered_leaf_root_or_leaf_hash_fails(n: int) -> None:
    lv = leaves_of(n)
    r = root(lv)
    for i in range(n):
        p = prove(lv, i)
        assert not p.verify(r, lv[i] + b"!")
        assert not p.verify(flip(r), lv[i])
        assert not p.verify(r, lv[(i + 1) % n]) or n == 1
        other = merkle.leaf_hash(b"other")
        assert not MerkleProof(p.total, p.index, other, p.aunts).verify(r, lv[i])
        # leaf_hash and leaf consistent but not in the tree:
        assert not MerkleProof(p.total, p.index, other, p.aunts).verify(r, b"other")


def test_proof_for_other_tree_fails() -> None:
    a, b = leaves_of(6), [x + b"'" for x in leaves_of(6)]
    assert not prove(a, 2).verify(root(b), a[2])


@pytest.mark.parametrize("total,index", [(0, 0), (-1, 0), (3, -1), (3, 3)])
def test_out_of_range_proof_fields(total: int, index: int) -> None:
    p = MerkleProof(total, index, merkle.leaf_hash(b"x"), [])
    assert not p.verify(merkle.leaf_hash(b"x"), b"x")
    with pytest.raises(ValueError):
        p.compute_root()


def test_proof_encoding_round_trip() -> None:
    p = prove(leaves_of(7), 5)
    data = encoding.encode(p)
    assert encoding.decode(data, MerkleProof) == p
    with pytest.raises(encoding.EncodingError):
        encoding.decode(data + b"\x00", MerkleProof)
