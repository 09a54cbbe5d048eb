"""Sends Collector.Export calls from Python: first raw garbage bytes as the
message (not a FlowBatch), then one valid batch. Prints a JSON summary.

usage: export.py STUB_DIR ADDR
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from flowagent.v1 import flow_pb2  # noqa: E402

channel = grpc.insecure_channel(sys.argv[2])
out = {}

raw = channel.stream_stream(
    "/flowagent.v1.Collector/Export",
    request_serializer=lambda b: b,
    response_deserializer=flow_pb2.ExportAck.FromString,
)
try:
    acks = list(raw(iter([b"\xff\xff\xff\xff garbage"]), timeout=10))
    out["garbage"] = "OK"
except grpc.RpcError as e:
    out["garbage"] = e.code().name

export = channel.stream_stream(
    "/flowagent.v1.Collector/Export",
    request_serializer=flow_pb2.FlowBatch.SerializeToString,
    response_deserializer=flow_pb2.ExportAck.FromString,
)
record = flow_pb2.FlowRecord(
    src_addr=bytes([192, 0, 2, 1]),
    dst_addr=bytes([198, 51, 100, 2]),
    src_port=1234,
    dst_port=53,
    proto=17,
    packets=2,
    bytes=300,
    start_ns=1_700_000_000_000_000_000,
    end_ns=1_700_000_000_000_000_000,
    sampling_rate=1,
    agent_id="py",
)
batch = flow_pb2.FlowBatch(agent_id="py", epoch=1, batch_id=1, records=[record])
acks = list(export(iter([batch]), timeout=10))
out["acks"] = [[a.batch_id, a.duplicate] for a in acks]
print(json.dumps(out))
