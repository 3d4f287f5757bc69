"""Owns the S3 ledger sink: entry objects ``<prefix>/entries/<seq:020d>`` written with
``PutObject`` and ``If-None-Match: *``. Must not overwrite or delete an object, nor judge entries.

Gap-free sequence: an object is created only if its key does not exist yet, so two writers never
both take a seq; the loser gets 412 PreconditionFailed (or 409 ConditionalRequestConflict while
the winner's upload is in flight) and the journal retries at the new head. With S3 Object Lock
in compliance mode on the bucket, nobody can change or delete an entry before its retention ends
(docs/erasure.md, "Journal and ledger").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

from .._repr import safe_repr
from ..errors import ConfigurationError, LedgerUnavailableError
from ..kms._aws import aws_url_params, build_aws_client, check_endpoint
from ._ledger import StoredEntry, TornWrite, check_batch

__all__ = ["S3Ledger"]

URL_PARAMS = frozenset(
    {"region", "endpoint_url", "profile", "max_attempts", "connect_timeout", "read_timeout"}
)
_CONFLICTS = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
_MISSING = ("404", "NoSuchKey", "NotFound")
_WIDTH = 20


class S3Ledger:
    """A ledger in an S3 bucket under ``prefix``: one installation per prefix (the genesis
    object names it); ``installation_id`` arguments are not used to select.

    Pass a boto3 S3 ``client`` or let the sink build one (``region``, ``endpoint_url``,
    ``profile``; botocore's standard retries, ``max_attempts`` calls at most). Credentials come
    from boto3's chain. The principal needs ``s3:PutObject``, ``s3:GetObject`` and
    ``s3:ListBucket`` on the prefix, never ``s3:DeleteObject``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "ccvault-ledger",
        *,
        client: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        max_attempts: int = 4,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
    ) -> None:
        if not isinstance(bucket, str) or not 3 <= len(bucket) <= 63 or "/" in bucket:
            raise ConfigurationError("an S3 ledger needs a bucket name (3 to 63 characters)")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._dir = f"{self._prefix}/entries/" if self._prefix else "entries/"
        if endpoint_url is not None:
            check_endpoint(endpoint_url)
        if client is None:
            client = build_aws_client(
                "s3",
                region=region,
                endpoint_url=endpoint_url,
                profile=profile,
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                what="S3 ledger",
                no_region="no AWS region for the S3 ledger: add ?region= to its URL",
            )
            self._owns_client = True
        else:
            if region is not None or endpoint_url is not None or profile is not None:
                raise ConfigurationError(
                    "pass either client= or region/endpoint_url/profile, not both"
                )
            self._owns_client = False
        actual = getattr(getattr(client, "meta", None), "endpoint_url", None)
        if isinstance(actual, str):
            check_endpoint(actual)
        self._client = client
        self._hint = -1  # highest seq seen: where the next search for the head starts

    @classmethod
    def from_url(cls, url: str, *, client: Any = None) -> S3Ledger:
        """``s3://bucket/prefix?region=…&endpoint_url=…&profile=…&max_attempts=…``."""
        rest = url[len("s3://") :] if url[:5].lower() == "s3://" else ""
        path = rest.partition("?")[0]
        if not rest or "#" in rest or "@" in path:
            raise ConfigurationError(
                "an S3 ledger URL looks like s3://bucket/prefix?region=... (no credentials)"
            )
        bucket, _, prefix = unquote(path).partition("/")
        query = url.partition("?")[2]
        where, options = aws_url_params(query, URL_PARAMS, what="S3 ledger")
        if client is not None:
            return cls(bucket, prefix, client=client)
        return cls(bucket, prefix, **where, **options)

    @safe_repr
    def __repr__(self) -> str:
        return f"S3Ledger({self.location!r})"

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}"

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _key(self, seq: int) -> str:
        return f"{self._dir}{seq:0{_WIDTH}d}"

    def _seq(self, key: str) -> int | None:
        tail = key[len(self._dir) :]
        return int(tail) if len(tail) == _WIDTH and tail.isdigit() else None

    def _call(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(Bucket=self._bucket, **params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _CONFLICTS or status in ("412", "409"):
                raise _Taken from None
            if code in _MISSING or (operation == "head_object" and status == "404"):
                raise _Missing from None
            reason = f"{code or status or 'error'} on {operation}"
        except BotoCoreError as exc:
            reason = f"{type(exc).__name__} on {operation}"
        raise LedgerUnavailableError(
            f"the ledger at {self.location} could not be reached: {reason}",
            location=self.location,
        )

    def _exists(self, seq: int) -> bool:
        try:
            self._call("head_object", Key=self._key(seq))
        except _Missing:
            return False
        return True

    def _get(self, seq: int) -> bytes | None:
        try:
            body: bytes = self._call("get_object", Key=self._key(seq))["Body"].read()
        except _Missing:
            return None
        return body

    def _keys(self, after: int) -> Iterator[int]:
        """The seqs stored after ``after``, ascending (ListObjectsV2, a page at a time)."""
        params: dict[str, Any] = {"Prefix": self._dir}
        if after >= 0:
            params["StartAfter"] = self._key(after)
        while True:
            page = self._call("list_objects_v2", **params)
            for item in page.get("Contents", ()):
                seq = self._seq(item["Key"])
                if seq is not None:
                    yield seq
            if not page.get("IsTruncated"):
                return
            params.pop("StartAfter", None)
            params["ContinuationToken"] = page["NextContinuationToken"]

    # -- the LedgerSink protocol ------------------------------------------------------------------

    def head(self, installation_id: str) -> StoredEntry | None:
        """Found in O(log n) requests: gallop from the last seq seen while objects exist, search
        back between the last hit and the first miss, then list anything beyond (a hole in the
        sequence cannot hide entries after it)."""
        low = self._hint if self._hint >= 0 and self._exists(self._hint) else -1
        if low < 0 and self._exists(0):
            low = 0
        if low >= 0:
            step = 1
            while self._exists(low + step):
                low, step = low + step, step * 2
            high = low + step  # missing
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if self._exists(middle) else (low, middle)
        last = low
        for seq in self._keys(low):
            last = max(last, seq)
        if last < 0:
            return None
        self._hint = max(self._hint, last)
        return StoredEntry(last, self._get(last), f"key {self._key(last)}")

    def read(
        self, installation_id: str, after: int = -1, limit: int | None = None
    ) -> Iterator[StoredEntry]:
        given = 0
        for seq in self._keys(after):
            if limit is not None and given >= limit:
                return
            data = self._get(seq)
            if data is None:  # deleted between the listing and the read
                continue
            given += 1
            self._hint = max(self._hint, seq)
            yield StoredEntry(seq, data, f"key {self._key(seq)}")

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        check_batch(first_seq, entries)
        # The condition's other half: the entry before exists (a delete marker, which Object
        # Lock does not prevent, could hide it): one HEAD request.
        if first_seq > 0 and not self._exists(first_seq - 1):
            return 0
        for i, data in enumerate(entries):
            try:
                self._call(
                    "put_object",
                    Key=self._key(first_seq + i),
                    Body=data,
                    IfNoneMatch="*",
                    ContentType="application/json",
                )
            except _Taken:
                return i
            self._hint = max(self._hint, first_seq + i)
        return len(entries)

    def torn(self, installation_id: str, *, repair: bool) -> list[TornWrite]:
        """None: an object is written whole or not at all."""
        return []


class _Taken(Exception):
    """The key exists (412) or a concurrent conditional write holds it (409)."""


class _Missing(Exception):
    """No such object."""
