"""Build and sign transactions (CLI, SDK, simulator, tests).

Single key::

    raw = sign_tx(build_body(chain_id, key.address, nonce, [bank.send_msg(to, 5)]), key).to_bytes()

Multisig (k of n): build the body with the policy's address as signer, let each member
sign it (possibly on different machines, passing the body bytes around), then assemble::

    body = build_body(chain_id, policy.address, nonce, msgs)
    sigs = [member_signature(body, k) for k in some_member_keys]
    raw = assemble_multisig(body, policy, sigs).to_bytes()
"""

from __future__ import annotations

from collections.abc import Sequence

from cifer.app.contracts.bank import DEFAULT_MIN_FEE
from cifer.base import encoding
from cifer.base.chain.types import AnyMsg, SignedTx, TxBody, TxSignature, tx_sign_bytes
from cifer.base.crypto.keys import PrivateKey
from cifer.base.crypto.multisig import MultisigPolicy

#: The fee a builder uses unless told otherwise: the default genesis minimum.
DEFAULT_FEE = DEFAULT_MIN_FEE


def build_body(
    chain_id: str,
    signer: bytes,
    nonce: int,
    msgs: Sequence[AnyMsg],
    *,
    fee: int = DEFAULT_FEE,
    memo: str = "",
) -> TxBody:
    """The unsigned part of a tx; ``signer`` pays the fee and owns ``nonce``."""
    return TxBody(chain_id, signer, nonce, fee, list(msgs), memo)


def member_signature(body: TxBody, key: PrivateKey) -> TxSignature:
    """One signature over ``body`` (a single-key signer, or one multisig member)."""
    return TxSignature(key.public.raw, key.sign(tx_sign_bytes(body)))


def sign_tx(body: TxBody, key: PrivateKey) -> SignedTx:
    """A single-key tx; ``key`` must be the signer's key."""
    if key.address != body.signer:
        raise ValueError("signing key does not match the tx signer address")
    return SignedTx(body, [member_signature(body, key)])


def assemble_multisig(
    body: TxBody, policy: MultisigPolicy, signatures: Sequence[TxSignature]
) -> SignedTx:
    """A multisig tx from members' signatures (deduplicated, in policy key order)."""
    if policy.address != body.signer:
        raise ValueError("multisig policy address does not match the tx signer")
    by_key = {s.pubkey: s for s in signatures}
    order = {k: i for i, k in enumerate(policy.pubkeys)}
    ordered = sorted(by_key.values(), key=lambda s: order.get(s.pubkey, len(order)))
    return SignedTx(body, ordered, policy)


def make_tx(
    key: PrivateKey,
    chain_id: str,
    nonce: int,
    msgs: Sequence[AnyMsg],
    *,
    fee: int = DEFAULT_FEE,
    memo: str = "",
) -> bytes:
    """Encoded, signed single-key tx in one call (what benchmarks and tests mostly want)."""
    return sign_tx(
        build_body(chain_id, key.address, nonce, msgs, fee=fee, memo=memo), key
    ).to_bytes()


def decode_body(data: bytes) -> TxBody:
    """Parse body bytes passed between multisig members for signing."""
    return encoding.decode(data, TxBody)


def encode_body(body: TxBody) -> bytes:
    return encoding.encode(body)
