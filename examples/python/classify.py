#!/usr/bin/env python3
"""Classify one text with a running zinferd over zenoh, then print a telemetry snapshot.

Two ways to ask: publish the request and wait for its result (the default), or, with ``--query PIPELINE``, ask the
pipeline's queryable ``<telemetry prefix>/infer/<pipeline>`` and take its one reply (steps 2-4 then become one
``get``: see ``ask``).

What it does, in the order a client should do it:

1. Opens a zenoh peer session that connects to the daemon's endpoint, listens nowhere and has multicast scouting
   off, so it talks to exactly the daemon it is pointed at (as `zinferd send` does).
2. Subscribes to the result key, ``<output_prefix>/<request key>``, *before* publishing: a result published
   before the subscription exists is lost.
3. Declares a publisher on the request key and waits (bounded) until it matches a subscriber. zenoh silently
   drops a put that nobody subscribes to yet, so publishing the moment the session opens can lose the request.
4. Publishes ``{"id": ..., "text": ...}`` with encoding ``application/json`` and waits (bounded) for the result
   with the same id; results for other requests on the same key are skipped.
5. Queries ``<telemetry prefix>/status`` and prints the snapshot zinferd answers with.

Usage (with the daemon running on the default config):

    .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/classify.py "a gripping, beautifully acted film"
    .venv/bin/python examples/python/classify.py --key zinfer/in/text/cam1 --id 42 "dull and far too long"
    .venv/bin/python examples/python/classify.py --query sentiment "dull and far too long"

Exit status: 0 when the result arrived (whatever its outcome), 1 when the daemon or the result did not.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid

import zenoh


def open_session(endpoint: str) -> zenoh.Session:
    """A peer session connected to ``endpoint`` only: no listening, no multicast scouting."""
    config = zenoh.Config()
    config.insert_json5("mode", json.dumps("peer"))
    config.insert_json5("connect/endpoints", json.dumps([endpoint]))
    config.insert_json5("listen/endpoints", json.dumps([]))
    config.insert_json5("scouting/multicast/enabled", json.dumps(False))
    return zenoh.open(config)


def wait_for_subscriber(publisher: zenoh.Publisher, timeout_s: float) -> bool:
    """Waits until something (zinferd's pipeline) subscribes to the publisher's key; False on timeout."""
    deadline = time.monotonic() + timeout_s
    # eclipse-zenoh 1.10 returns a MatchingStatus object here (its type stubs say bool); `.matching` is the flag.
    while not publisher.matching_status.matching:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def classify(
    session: zenoh.Session,
    key: str,
    output_prefix: str,
    request_id: str,
    text: str,
    timeout_s: float,
) -> dict | None:
    """Publishes one JSON request on ``key`` and returns its result as a dict, or None on timeout."""
    results: queue.Queue[zenoh.Sample] = queue.Queue()
    # The callback runs on a zenoh thread; hand samples over to this one through a queue.
    subscriber = session.declare_subscriber(f"{output_prefix.rstrip('/')}/{key.lstrip('/')}", results.put)
    publisher = session.declare_publisher(key, encoding=zenoh.Encoding.APPLICATION_JSON)
    try:
        if not wait_for_subscriber(publisher, timeout_s):
            print(f"no zinferd subscribes to {key!r} (is it running?)", file=sys.stderr)
            return None
        publisher.put(json.dumps({"id": request_id, "text": text}))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                sample = results.get(timeout=left)
            except queue.Empty:
                break
            # Results are JSON unless the pipeline sets result_encoding = "protobuf".
            result = json.loads(sample.payload.to_bytes())
            if result.get("id") == request_id:
                return result
        print(f"no result for request {request_id!r} within {timeout_s} s", file=sys.stderr)
        return None
    finally:
        publisher.undeclare()
        subscriber.undeclare()


def ask(
    session: zenoh.Session,
    prefix: str,
    pipeline: str,
    request_id: str,
    text: str,
    timeout_s: float,
) -> dict | None:
    """Asks pipeline ``pipeline`` with one JSON request as a zenoh query and returns the result its reply carries.

    zinferd answers every query it accepts exactly once: a reply with the result when the outcome is "ok", else a
    reply error whose payload is the same result with its outcome ("dropped", "expired", "error") and reason. The
    selector parameter ``deadline_ms`` tells zinferd the query's timeout, which zenoh does not pass on.
    """
    key = f"{prefix.rstrip('/')}/infer/{pipeline}"
    replies = session.get(
        f"{key}?deadline_ms={int(timeout_s * 1000)}",
        payload=json.dumps({"id": request_id, "text": text}),
        encoding=zenoh.Encoding.APPLICATION_JSON,
        timeout=timeout_s,
    )
    for reply in replies:
        answer = reply.ok if reply.ok is not None else reply.err
        return json.loads(answer.payload.to_bytes())
    print(f"no reply on {key!r}: is zinferd running, and is {pipeline!r} its pipeline's name?", file=sys.stderr)
    return None


def status(session: zenoh.Session, prefix: str, timeout_s: float) -> list[dict]:
    """Queries ``<prefix>/status``; every running zinferd with that prefix answers with one snapshot.

    Target ALL and no consolidation: several daemons answer on the same key, and zenoh's default consolidation
    would keep only one of their replies.
    """
    snapshots = []
    key = f"{prefix.rstrip('/')}/status"
    replies = session.get(key, target=zenoh.QueryTarget.ALL, consolidation=zenoh.ConsolidationMode.NONE, timeout=timeout_s)
    for reply in replies:
        if reply.ok is not None:
            snapshots.append(json.loads(reply.ok.payload.to_bytes()))
        else:
            print(f"status query error: {reply.err.payload.to_string()}", file=sys.stderr)
    return snapshots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="the text to classify")
    parser.add_argument("--connect", default="tcp/127.0.0.1:7447", help="zinferd's endpoint")
    parser.add_argument("--key", default="zinfer/in/text/python", help="request key (must match a pipeline input)")
    parser.add_argument("--output-prefix", default="zinfer/out", help="the pipeline's output_prefix")
    parser.add_argument("--telemetry-prefix", default="zinfer", help="the daemon's telemetry.prefix")
    parser.add_argument("--id", default=None, help="request id (default: random)")
    parser.add_argument("--query", metavar="PIPELINE", help="ask this pipeline's queryable instead of publishing")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon and the result")
    args = parser.parse_args()

    request_id = args.id or f"py-{uuid.uuid4().hex[:12]}"
    session = open_session(args.connect)
    try:
        if args.query:
            result = ask(session, args.telemetry_prefix, args.query, request_id, args.text, args.timeout)
        else:
            result = classify(session, args.key, args.output_prefix, request_id, args.text, args.timeout)
        if result is None:
            return 1
        print("result:")
        print(json.dumps(result, indent=2))
        snapshots = status(session, args.telemetry_prefix, args.timeout)
        print("status:")
        print(json.dumps(snapshots[0] if len(snapshots) == 1 else snapshots, indent=2))
        return 0
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
