"""Writing and finding objects behind a store's back, as a hostile writer would: any name,
on both backends (a file in the directory, or an S3 object put with boto3)."""

from __future__ import annotations

import asyncio

import boto3

from wonders.mailbox import DirectoryStore, S3Store, Store


def _s3(store: S3Store):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


async def put_raw(store: Store, key: str, data: bytes = b"odd") -> None:
    """Store ``data`` under ``key`` without any key check."""
    if isinstance(store, DirectoryStore):
        path = store.root / key
        if key.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    assert isinstance(store, S3Store)
    client = _s3(store)
    await asyncio.to_thread(client.put_object, Bucket=store.bucket, Key=store.prefix + key,
                            Body=data)


async def exists_raw(store: Store, key: str) -> bool:
    """Whether an object is stored under ``key``, without any key check."""
    if isinstance(store, DirectoryStore):
        path = store.root / key
        return path.is_dir() if key.endswith("/") else path.is_file()
    assert isinstance(store, S3Store)
    client = _s3(store)
    listed = await asyncio.to_thread(client.list_objects_v2, Bucket=store.bucket,
                                     Prefix=store.prefix + key)
    return any(item["Key"] == store.prefix + key for item in listed.get("Contents", ()))


def odd_names(store: Store, request_id: str) -> list[str]:
    """Names no wonders peer writes, under a client's own request prefix (which the
    client may fill with anything, on S3 too), that each backend can hold."""
    names = [
        "requests/gpu01/x y",
        "requests/gpu01/\u00e9t\u00e9",
        "requests/gpu01/100%",
        "requests/gpu01/a%2Fb",
        "requests/gpu01/x",  # a valid key, but not one of the protocol's
        "requests/gpu01/not-an-id/head",
        f"requests/gpu01/{request_id}/head/extra",
        f"requests/gpu01/{request_id}/body/\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661",
        "requests/x y/head",
        "requests/gpu01/trailing/",
    ]
    if isinstance(store, DirectoryStore):
        names += [
            "requests/gpu01/new\nline",
            "requests/gpu01/" + "/".join(["a" * 200] * 5),  # over the key length limit
        ]
    else:  # names a filesystem cannot hold (moto refuses a newline in a key)
        names += [
            "requests/gpu01/..",
            "requests/gpu01/../../escape",
            "requests/gpu01//double",
            "requests/gpu01/" + "a" * 1009,  # 1024 characters, S3's own limit
        ]
    return names
