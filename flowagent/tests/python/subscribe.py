"""Subscribes to a flowagent FlowStream with stubs generated from
proto/flowagent/v1/flow.proto by grpcio-tools, and prints one JSON summary.

usage: subscribe.py STUB_DIR ADDR WANT
Reads until WANT records arrived, with a filter of TCP records of at least
1000 bytes from 10.0.0.0/8, and checks the health service.
"""
import ipaddress
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from flowagent.v1 import flow_pb2, flow_pb2_grpc  # noqa: E402

addr, want = sys.argv[2], int(sys.argv[3])
channel = grpc.insecure_channel(addr)
stub = flow_pb2_grpc.FlowStreamStub(channel)
request = flow_pb2.SubscribeRequest(
    filter=flow_pb2.Filter(
        protocols=[6],
        prefixes=[flow_pb2.Prefix(addr=bytes([10, 0, 0, 0]), len=8)],
        min_bytes=1000,
    )
)
records, gaps, first = 0, 0, None
for event in stub.Subscribe(request, timeout=30):
    kind = event.WhichOneof("event")
    if kind == "gap":
        gaps += event.gap.missed_records
        continue
    r = event.record
    assert r.proto == 6 and r.bytes >= 1000, r
    assert ipaddress.ip_address(r.src_addr) in ipaddress.ip_network("10.0.0.0/8"), r
    if first is None:
        first = {
            "src": str(ipaddress.ip_address(r.src_addr)),
            "dst": str(ipaddress.ip_address(r.dst_addr)),
            "agent_id": r.agent_id,
            "iface_in": r.iface_in,
            "as_path": list(r.as_path),
            "large_communities": [
                [c.global_admin, c.local_data1, c.local_data2] for c in r.large_communities
            ],
            "direction": flow_pb2.Direction.Name(r.direction),
        }
    records += 1
    if records == want:
        break
print(json.dumps({"records": records, "gaps": gaps, "first": first}))
