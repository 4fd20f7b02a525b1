"""The fault proxy forwards S3 traffic unchanged, counts it per operation and injects faults."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from support.faultproxy import FaultProxy
from support.s3server import s3_client_for

pytestmark = pytest.mark.s3


@pytest.fixture
def via_proxy(fault_proxy: FaultProxy, s3_env: None) -> Any:
    return s3_client_for(fault_proxy.url)


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def test_forwards_requests_and_answers_unchanged(via_proxy: Any, s3_client: Any, s3_bucket: str) -> None:
    via_proxy.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello proxy", Metadata={"k": "v"})

    stored = s3_client.get_object(Bucket=s3_bucket, Key="a/b.txt")
    assert stored["Body"].read() == b"hello proxy"
    assert stored["Metadata"] == {"k": "v"}
    assert via_proxy.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello proxy"


def test_range_requests_return_partial_content(via_proxy: Any, s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="range", Body=b"0123456789")

    response = via_proxy.get_object(Bucket=s3_bucket, Key="range", Range="bytes=2-5")

    assert response["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert response["Body"].read() == b"2345"


def test_chunked_request_bodies_are_forwarded(fault_proxy: FaultProxy, s3_client: Any, s3_bucket: str) -> None:
    proxy = urlsplit(fault_proxy.url)
    connection = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)
    connection.request("PUT", f"/{s3_bucket}/chunked", body=iter([b"first,", b"second"]), encode_chunked=True)
    assert connection.getresponse().status == 200
    connection.close()

    assert s3_client.get_object(Bucket=s3_bucket, Key="chunked")["Body"].read() == b"first,second"
    assert fault_proxy.bytes_received == len(b"first,second")


def test_counts_requests_per_s3_operation(via_proxy: Any, fault_proxy: FaultProxy, s3_bucket: str) -> None:
    via_proxy.head_bucket(Bucket=s3_bucket)
    via_proxy.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    via_proxy.copy_object(Bucket=s3_bucket, Key="k2", CopySource={"Bucket": s3_bucket, "Key": "k"})
    via_proxy.head_object(Bucket=s3_bucket, Key="k2")
    via_proxy.get_object(Bucket=s3_bucket, Key="k2")["Body"].read()
    via_proxy.list_objects_v2(Bucket=s3_bucket)
    upload = via_proxy.create_multipart_upload(Bucket=s3_bucket, Key="m")["UploadId"]
    part = via_proxy.upload_part_copy(
        Bucket=s3_bucket, Key="m", UploadId=upload, PartNumber=1, CopySource={"Bucket": s3_bucket, "Key": "k"}
    )
    via_proxy.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="m",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
    )
    via_proxy.delete_object(Bucket=s3_bucket, Key="k")
    via_proxy.delete_objects(Bucket=s3_bucket, Delete={"Objects": [{"Key": "k2"}, {"Key": "m"}]})

    assert fault_proxy.counts() == {
        "HeadBucket": 1,
        "PutObject": 1,
        "CopyObject": 1,
        "HeadObject": 1,
        "GetObject": 1,
        "ListObjectsV2": 1,
        "CreateMultipartUpload": 1,
        "UploadPartCopy": 1,
        "CompleteMultipartUpload": 1,
        "DeleteObject": 1,
        "DeleteObjects": 1,
    }
    assert fault_proxy.count() == 11


def test_bytes_received_counts_request_bodies(via_proxy: Any, fault_proxy: FaultProxy, s3_bucket: str) -> None:
    fault_proxy.reset_counts()

    via_proxy.put_object(Bucket=s3_bucket, Key="sized", Body=b"x" * 1000)

    assert fault_proxy.bytes_received == 1000
    assert fault_proxy.counts() == {"PutObject": 1}


def test_fail_next_answers_with_a_parsable_s3_error_then_forwards_again(
    via_proxy: Any, fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    fault_proxy.fail_next(1, status=503, code="SlowDown")

    with pytest.raises(ClientError) as excinfo:
        via_proxy.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    via_proxy.put_object(Bucket=s3_bucket, Key="k", Body=b"x")

    assert error_code(excinfo) == "SlowDown"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert fault_proxy.count("PutObject") == 2


def test_fail_always_persists_until_cleared(via_proxy: Any, fault_proxy: FaultProxy, s3_bucket: str) -> None:
    fault_proxy.fail_always(403, "AccessDenied")

    for _ in range(3):
        with pytest.raises(ClientError) as excinfo:
            via_proxy.list_objects_v2(Bucket=s3_bucket)
        assert error_code(excinfo) == "AccessDenied"
    fault_proxy.clear()
    via_proxy.list_objects_v2(Bucket=s3_bucket)


def test_faults_apply_only_to_the_named_operations(via_proxy: Any, fault_proxy: FaultProxy, s3_bucket: str) -> None:
    fault_proxy.fail_always(503, operations=["PutObject"])

    via_proxy.head_bucket(Bucket=s3_bucket)
    with pytest.raises(ClientError):
        via_proxy.put_object(Bucket=s3_bucket, Key="k", Body=b"x")


def test_fail_fraction_fails_some_requests_reproducibly_by_seed(
    via_proxy: Any, fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    def outcomes() -> list[bool]:
        results = []
        for _ in range(30):
            try:
                via_proxy.head_bucket(Bucket=s3_bucket)
                results.append(True)
            except ClientError:
                results.append(False)
        return results

    fault_proxy.fail_fraction(0.5, seed=7)
    first = outcomes()
    fault_proxy.clear()
    fault_proxy.fail_fraction(0.5, seed=7)
    second = outcomes()

    assert 0 < first.count(False) < 30
    assert first == second


def test_reset_next_drops_the_connection_without_forwarding(
    via_proxy: Any, fault_proxy: FaultProxy, s3_client: Any, s3_bucket: str
) -> None:
    fault_proxy.reset_next(1, operations=["PutObject"])

    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        via_proxy.put_object(Bucket=s3_bucket, Key="lost", Body=b"x")

    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    via_proxy.put_object(Bucket=s3_bucket, Key="kept", Body=b"x")
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["kept"]


def test_delay_next_holds_a_request_past_the_client_timeout(
    fault_proxy: FaultProxy, s3_env: None, s3_bucket: str
) -> None:
    import boto3

    impatient = boto3.session.Session().client(
        "s3",
        endpoint_url=fault_proxy.url,
        config=Config(read_timeout=0.3, retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    fault_proxy.delay_next(1, seconds=1.0)

    with pytest.raises(ReadTimeoutError):
        impatient.head_bucket(Bucket=s3_bucket)
    impatient.head_bucket(Bucket=s3_bucket)


def test_duckdb_httpfs_writes_and_reads_parquet_through_the_proxy(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    import duckdb

    from sqlmesh_osaa.duckdb_storage import load_httpfs

    connection = duckdb.connect()
    load_httpfs(connection)  # from the duckdb-extension-httpfs package, as the product does: never ~/.duckdb
    endpoint = fault_proxy.url.removeprefix("http://")
    connection.execute(
        "CREATE SECRET (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
        f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)"
    )
    url = f"s3://{s3_bucket}/landing/data.parquet"

    connection.execute(f"COPY (SELECT range AS i FROM range(100000)) TO '{url}' (FORMAT parquet)")
    rows = connection.execute(f"SELECT count(*), sum(i) FROM '{url}'").fetchone()

    assert rows == (100000, sum(range(100000)))
    assert fault_proxy.count("GetObject") >= 1
    assert fault_proxy.count("PutObject") + fault_proxy.count("CompleteMultipartUpload") == 1


def test_a_stopped_proxy_refuses_connections(s3_server: str, s3_env: None) -> None:
    proxy = FaultProxy(s3_server).start()
    client = s3_client_for(proxy.url)
    client.list_buckets()

    proxy.stop()

    with pytest.raises(EndpointConnectionError):
        client.list_buckets()
