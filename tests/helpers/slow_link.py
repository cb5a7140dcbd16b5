"""A slow, lossy link where the kernel lacks `tc netem`: packets queued by iptables' NFQUEUE, held, some dropped.

Run inside a node's network namespace: `python slow_link.py --queue 0 --delay-ms 50 --loss 0.01`, with a rule such
as `iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0` sending the node's outgoing packets to the queue. Each
packet gets its verdict `--delay-ms` after it was queued (so the kernel sends it that much later, in order),
and a random `--loss` fraction is dropped instead. Speaks nfnetlink_queue directly (no library needed).
Prints one line when bound; SIGTERM ends it, with every held packet let through.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
SO_RCVBUFFORCE = 33


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(kind: int, queue: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, NLM_F_REQUEST, 0, 0) + body


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink datagram."""
    ids, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20
            while at + 4 <= offset + length:
                attr_len, attr_kind = struct.unpack_from("=HH", data, at)
                if attr_len < 4:
                    break
                if attr_kind & 0x3FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                at += (attr_len + 3) & ~3
        elif kind == NLMSG_ERROR and struct.unpack_from("=i", data, offset + 16)[0] != 0:
            raise OSError(-struct.unpack_from("=i", data, offset + 16)[0], "nfnetlink_queue refused the config")
        offset += (length + 3) & ~3
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--loss", type=float, default=0.01)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.bind((0, 0))
    sock.send(_message(NFQNL_MSG_CONFIG, args.queue, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0,
                                                                                           socket.AF_INET))))
    sock.send(_message(NFQNL_MSG_CONFIG, args.queue, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))))
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    held: collections.deque[tuple[float, int, int]] = collections.deque()
    delay, passed, dropped = args.delay_ms / 1000, 0, 0
    print(f"slow link on queue {args.queue}: {args.delay_ms:g} ms, loss {args.loss:g}", flush=True)

    def verdict(packet_id: int, decision: int) -> None:
        sock.send(_message(NFQNL_MSG_VERDICT, args.queue, _attr(NFQA_VERDICT_HDR,
                                                                struct.pack("!II", decision, packet_id))))

    while running[0]:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id, decision = held.popleft()
            verdict(packet_id, decision)
        sock.settimeout(max(0.001, held[0][0] - now) if held else 0.2)
        try:
            data = sock.recv(1 << 16)
        except (TimeoutError, InterruptedError):
            continue
        arrived = time.monotonic()
        for packet_id in _packet_ids(data):
            decision = NF_DROP if random.random() < args.loss else NF_ACCEPT
            passed += decision == NF_ACCEPT
            dropped += decision == NF_DROP
            held.append((arrived + delay, packet_id, decision))
    for _, packet_id, decision in held:
        verdict(packet_id, decision)
    print(f"slow link on queue {args.queue}: {passed} packets delayed, {dropped} dropped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
