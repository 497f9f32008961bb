#!/usr/bin/env python3
"""Writes a seed for fuzz/fuzz_targets/virtio_net.rs: a driver that sets the device up the
way Linux does (status, features, two queues of 16), sends one frame and receives one, in
that target's operation encoding. Usage: virtio_net.py OUT_FILE"""
import struct
import sys

out = bytearray()


def reg(offset, value):
    out.extend(b"\x00" + struct.pack("<HB", offset, 2) + struct.pack("<I", value))


def mem(addr, data):
    assert addr % 4 == 0
    out.extend(b"\x02" + struct.pack("<HH", addr // 4, len(data)) + data)


def desc(addr, length, flags, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


RXQ, TXQ, RXBUF, TXBUF = 0x1000, 0x2000, 0x9000, 0x8000
reg(0x70, 1)  # ACKNOWLEDGE
reg(0x70, 3)  # DRIVER
reg(0x24, 1)
reg(0x20, 1)  # VIRTIO_F_VERSION_1 (bit 32)
reg(0x24, 0)
reg(0x20, 1 << 5)  # VIRTIO_NET_F_MAC
reg(0x70, 11)  # FEATURES_OK
for q, base in ((0, RXQ), (1, TXQ)):
    reg(0x30, q)
    reg(0x38, 16)
    reg(0x80, base)
    reg(0x84, 0)
    reg(0x90, base + 0x100)
    reg(0x94, 0)
    reg(0xA0, base + 0x200)
    reg(0xA4, 0)
    reg(0x44, 1)
reg(0x70, 15)  # DRIVER_OK
frame = bytes(12) + b"\xff" * 6 + b"\x52\x54\x00\x00\x00\x01" + b"\x08\x00" + bytes(46)
mem(TXBUF, frame)
mem(TXQ, desc(TXBUF, len(frame), 0))
mem(TXQ + 0x100, struct.pack("<HHH", 0, 1, 0))  # avail: flags, idx 1, ring[0] = 0
reg(0x50, 1)  # notify the TX queue
out.extend(b"\x03\x05")  # the loop runs TX; the host reads it
mem(RXQ, desc(RXBUF, 2048, 2))  # VIRTQ_DESC_F_WRITE
mem(RXQ + 0x100, struct.pack("<HHH", 0, 1, 0))
reg(0x50, 0)
host = b"\x52\x54\x00\x00\x00\x01" + b"\xff" * 6 + b"\x08\x00" + bytes(46)
out.extend(b"\x04" + struct.pack("<H", len(host)) + host)
reg(0x64, 1)  # interrupt ACK
out.extend(b"\x01" + struct.pack("<HB", 0x60, 2))  # read InterruptStatus

with open(sys.argv[1], "wb") as f:
    f.write(out)
