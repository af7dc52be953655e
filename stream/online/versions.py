"""The model-updates message protocol: a version's messages, and the topic folded into a view.

**model-updates** (compacted, one partition). Keys are designed for compaction:

    v/<version:010d>/chunk/<i:06d>   weights: the checkpoint bytes (models/checkpoint.py format) in
                                     slices of at most CHUNK_BYTES (messages stay < 512 KiB)
    v/<version:010d>/manifest        version, parent, source, metrics, n_chunks, size, sha256
                                     (written after its chunks: a version is complete when its
                                     manifest and all its chunks are there and the hash matches)
    head                             {"version": newest published}
    trainer/status                   the trainer's last round (decision, metrics)

Every version has its own keys, so publishing v+1 can never damage v: the latest complete version
always survives compaction, even if a publisher dies half-way. Manifests are tiny and kept (the
history `seqstream model list` shows); the chunks of versions older than the newest
`keep_versions` (default 5) online versions are deleted with tombstones, so the topic stays
bounded and those versions show as "weights: gone" (rollback needs weights); offline checkpoints
(the trainer publishes its base before its first promotion) keep their weights.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import msgpack

log = logging.getLogger("seqstream.online")

CHUNK_BYTES = 480 * 1024  # + msgpack framing: every message stays below 512 KiB
MAX_MESSAGE_BYTES = 512 * 1024
HEAD_KEY = b"head"
STATUS_KEY = b"trainer/status"


def version_key(version: int, rest: str) -> bytes:
    return f"v/{version:010d}/{rest}".encode()


def version_messages(version: int, blob: bytes, manifest: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """(key, value) messages of one version: chunks first, then the manifest, then head."""
    chunks = [blob[i: i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    out = [(version_key(version, f"chunk/{i:06d}"),
            msgpack.packb({"version": version, "i": i, "data": c}, use_bin_type=True))
           for i, c in enumerate(chunks)]
    man = {**manifest, "type": "manifest", "version": int(version), "n_chunks": len(chunks),
           "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    man.setdefault("created_ms", int(time.time() * 1000))
    out.append((version_key(version, "manifest"), msgpack.packb(man, use_bin_type=True)))
    out.append((HEAD_KEY, msgpack.packb({"version": int(version)}, use_bin_type=True)))
    assert all(len(v) <= MAX_MESSAGE_BYTES for _, v in out)
    return out


class VersionStore:
    """What model-updates says, folded message by message (the compacted topic's view)."""

    def __init__(self, keep_data: bool = True) -> None:
        self.manifests: dict[int, dict[str, Any]] = {}
        self.chunks: dict[int, dict[int, bytes]] = {}
        self.head: int | None = None
        self.status: dict[str, Any] | None = None
        self.keep_data = keep_data
        self.bad = 0

    @property
    def max_version(self) -> int | None:
        return max(self.manifests) if self.manifests else None

    def apply(self, key: bytes | None, value: bytes | None) -> int | None:
        """Fold one message; returns the version it touched (if any)."""
        if not key:
            return None
        k = key.decode(errors="replace")
        try:
            if k == "head":
                if value is not None:
                    self.head = int(msgpack.unpackb(value, raw=False)["version"])
                return None
            if k == "trainer/status":
                self.status = msgpack.unpackb(value, raw=False) if value is not None else None
                return None
            parts = k.split("/")
            if len(parts) < 3 or parts[0] != "v":
                return None
            version = int(parts[1])
            if parts[2] == "manifest":
                if value is None:
                    self.manifests.pop(version, None)
                else:
                    self.manifests[version] = msgpack.unpackb(value, raw=False)
            elif parts[2] == "chunk" and len(parts) == 4:
                i = int(parts[3])
                if value is None:
                    self.chunks.get(version, {}).pop(i, None)
                else:
                    self.chunks.setdefault(version, {})[i] = msgpack.unpackb(value, raw=False)["data"]
            return version
        except Exception:  # a malformed message must not stop the follower
            self.bad += 1
            log.warning("ignoring a malformed model-updates message %r", k)
            return None

    def has_weights(self, version: int) -> bool:
        m = self.manifests.get(version)
        return m is not None and len(self.chunks.get(version, {})) >= int(m["n_chunks"])

    def assemble(self, version: int) -> bytes | None:
        """The checkpoint bytes of a complete version (hash checked), else None."""
        if not self.has_weights(version):
            return None
        m = self.manifests[version]
        got = self.chunks[version]
        blob = b"".join(got[i] for i in range(int(m["n_chunks"])))
        if len(blob) != int(m["size"]) or hashlib.sha256(blob).hexdigest() != m["sha256"]:
            return None
        return blob

    def latest_complete(self, above: int | None = None) -> int | None:
        for v in sorted(self.manifests, reverse=True):
            if above is not None and v <= above:
                return None
            if self.assemble(v) is not None:
                return v
        return None

    def forget_below(self, version: int) -> None:
        """Drop chunk bytes of versions below `version` (followers keep memory bounded)."""
        for v in [v for v in self.chunks if v < version]:
            del self.chunks[v]

