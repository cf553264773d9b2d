#!/usr/bin/env python3
"""A downstream CRM consumer in Python (confluent-kafka): reads the routed-inquiry topic from the
beginning with its own consumer group and validates every record against the published JSON
Schema (docs/schemas/stored-inquiry.v2.schema.json, which references inquiry.v2.schema.json).

    python3 tests/consumers/validate_routed.py --brokers 127.0.0.1:9092 \
        --topic inquiries.routed.v2 --expect 50000 --schemas docs/schemas

Exits 0 when at least --expect distinct inquiries were read and every record is valid; prints
"<n> distinct inquiries valid". Duplicates (same inquiry_id) are counted and reported: a consumer
drops them by inquiry_id, as docs/topics.md describes.
"""
import argparse
import json
import pathlib
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError
from jsonschema import Draft202012Validator
from referencing import Registry, Resource


def load_validator(schema_dir: pathlib.Path, root_name: str) -> Draft202012Validator:
    resources = []
    for path in schema_dir.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry().with_resources(resources)
    root = json.loads((schema_dir / root_name).read_text())
    return Draft202012Validator(root, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--schemas", type=pathlib.Path, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--schema", default="stored-inquiry.v2.schema.json",
                        help="schema file of the topic's values, in --schemas")
    args = parser.parse_args()

    validator = load_validator(args.schemas, args.schema)
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": f"validate-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([args.topic])
    seen, records, invalid = set(), 0, 0
    deadline = time.monotonic() + args.timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(seen) >= args.expect and time.monotonic() - idle_since > 3:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                print(f"consumer error: {msg.error()}", file=sys.stderr)
                return 2
            idle_since = time.monotonic()
            records += 1
            headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
            value = json.loads(msg.value())
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
            value_id = value.get("inquiry", {}).get("id") or value.get("inquiry_id")
            if headers.get("inquiry_id") != value_id:
                errors.append("inquiry_id header does not match the record")
            if headers.get("schema") != "inquiry-gateway.routed-inquiry.v2":
                errors.append(f"unexpected schema header {headers.get('schema')!r}")
            if errors:
                invalid += 1
                if invalid <= 5:
                    print(f"invalid record at offset {msg.offset()}: {errors[0]}", file=sys.stderr)
            seen.add(headers.get("inquiry_id"))
    finally:
        consumer.close()
    print(f"{records} records, {records - len(seen)} duplicates, {invalid} invalid")
    if invalid == 0 and len(seen) >= args.expect:
        print(f"{len(seen)} distinct inquiries valid")
        return 0
    print(f"expected {args.expect} distinct valid inquiries, got {len(seen)} ({invalid} invalid)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
