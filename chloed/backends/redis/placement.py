"""Which shard a channel lives on (:class:`Placement`), and a publish's
receipts merged across shards (:func:`merge_receipts`).

Placement is rendezvous hashing (highest random weight): each shard weighs
each channel name, ``blake2b(shard + NUL + name)`` read as a 64-bit number,
and the heaviest shard holds the channel. Nothing is stored or agreed on:
every node computes the same answer from the shards' names and the channel
name alone, as long as every node lists the same shards. The order of the
list does not matter to placement (only to which shard is the home one).

Adding an (n+1)th shard moves exactly the channels the new shard outweighs
the old winner on, about 1/(n+1) of them, all to the new shard: no channel
moves between shards that were there before. Removing a shard moves only
its channels, each to the shard that weighed it second.

A shard's name is ``host:port/db`` of its URL, so ``redis://a`` and
``redis://a:6379/0`` are the same shard; a host spelled differently on two
nodes (an IP address on one, a name on the other) is not.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from chloed.backends.base import PublishResult
from chloed.backends.redis.keys import parse_url


def shard_name(url: str) -> str:
    """What placement knows a shard by: ``host:port/db`` of its URL."""
    host, port, db = parse_url(url)
    return f"{host}:{port}/{db}"


class Placement:
    """Rendezvous hashing of channel names over shards.

    :param names: the shards' names (:func:`shard_name`), as every node
        lists them.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"a shard is listed twice in {list(names)}")
        self.names = list(names)
        # Each shard's hash state after its own name: one copy and one
        # update per shard and channel, not a hash of the name joined.
        self._seeds = [hashlib.blake2b(name.encode("utf-8") + b"\0", digest_size=8) for name in names]

    def weights(self, channel: str) -> list[int]:
        """Each shard's weight of ``channel`` (the heaviest holds it)."""
        # surrogatepass: a user channel's id may hold any code point.
        data = channel.encode("utf-8", "surrogatepass")
        weights = []
        for seed in self._seeds:
            hashed = seed.copy()
            hashed.update(data)
            weights.append(int.from_bytes(hashed.digest(), "big"))
        return weights

    def index(self, channel: str) -> int:
        """Which shard (its index in the list) holds ``channel``."""
        weights = self.weights(channel)
        return weights.index(max(weights))


def merge_receipts(names: Iterable[str], results: Iterable[PublishResult]) -> PublishResult:
    """One receipt of a publish run as one script per shard: every
    channel's id (in the order ``names`` gave them), the counts summed, a
    lower bound if any shard's is."""
    merged = PublishResult()
    ids: dict[str, str] = {}
    for result in results:
        ids.update(result.ids)
        merged.delivered += result.delivered
        merged.queued += result.queued
        merged.lower_bound = merged.lower_bound or result.lower_bound
    merged.ids = {name: ids[name] for name in dict.fromkeys(names) if name in ids}
    return merged
