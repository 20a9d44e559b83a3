#!/usr/bin/env python3
"""Snapshot layers for bench/run.sh: the same overwrites for blockfork and qcow2.

Layer i overwrites PER_LAYER random 4 KiB blocks chosen by seed i, with byte i.

  layers.py qemu-cmds SIZE_BYTES LAYERS PER_LAYER CLUSTER
      writes layer<i>.cmd, i in 1..LAYERS: qemu-io commands for qcow2 layer
      i: each overwritten 4 KiB block
      written as the whole cluster around it, which is what qemu's
      copy-on-write allocates in a live chain; so the layer can be written
      with its backing file closed (O(1) per layer instead of opening the
      chain below it). Same clusters allocated; only their content differs.

  layers.py nbd HOST PORT EXPORT API_URL LUN SIZE_BYTES LAYERS PER_LAYER
      for i in 1..LAYERS: snapshot LUN as s<i> through the REST API, then
      write layer i over NBD (pipelined) on one connection, then FLUSH.
"""
import json
import os
import random
import socket
import struct
import sys
import urllib.request

BLOCK = 4096


def offsets(size, layer, per_layer):
    rng = random.Random(layer)
    return [rng.randrange(size // BLOCK) * BLOCK for _ in range(per_layer)]


def qemu_cmds(size, layers, per_layer, cluster):
    for layer in range(1, layers + 1):
        seen = set()
        with open(f"layer{layer}.cmd", "w") as f:
            for off in offsets(size, layer, per_layer):
                c = off - off % cluster
                if c not in seen:
                    seen.add(c)
                    f.write(f"write -P {layer % 256} {c} {min(cluster, size - c)}\n")


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("NBD server closed the connection")
        buf += chunk
    return bytes(buf)


def nbd_connect(host, port, export):
    s = socket.create_connection((host, port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = recv_exact(s, 18)
    if hello[:16] != b"NBDMAGICIHAVEOPT":
        raise RuntimeError("not a newstyle NBD server")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)  # NBD_OPT_GO
    while True:
        _magic, _opt, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, rlen)
        if rtype == 1:  # ACK
            return s
        if rtype & (1 << 31):
            raise RuntimeError(f"NBD_OPT_GO refused for {export!r}: reply type {rtype:#x}")


def nbd_cmd(s, handle, typ, off=0, data=b"", length=None):
    n = len(data) if length is None else length
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, typ, handle, off, n) + data)


def nbd_replies(s, count):
    for _ in range(count):
        magic, err, _handle = struct.unpack(">IIQ", recv_exact(s, 16))
        if magic != 0x67446698 or err:
            raise RuntimeError(f"NBD write failed: magic {magic:#x} error {err}")


def nbd_layers(host, port, export, api, lun, size, layers, per_layer):
    s = nbd_connect(host, int(port), export)
    for i in range(1, layers + 1):
        body = json.dumps({"lun": lun, "name": f"s{i}"}).encode()
        req = urllib.request.Request(f"{api}/api/v1/snapshots", data=body, method="POST",
                                     headers={"content-type": "application/json",
                                              "authorization": "Bearer " + os.environ.get("BLOCKFORK_TOKEN", "")})
        urllib.request.urlopen(req, timeout=60).read()
        payload = bytes([i % 256]) * BLOCK
        offs = offsets(size, i, per_layer)
        for h, off in enumerate(offs):
            nbd_cmd(s, h, 1, off, payload)  # WRITE
        nbd_replies(s, len(offs))
    nbd_cmd(s, 0, 3, length=0)  # FLUSH
    nbd_replies(s, 1)
    nbd_cmd(s, 0, 2, length=0)  # DISC
    s.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["qemu-cmds"] and len(a) == 5:
        qemu_cmds(int(a[1]), int(a[2]), int(a[3]), int(a[4]))
    elif a[:1] == ["nbd"] and len(a) == 9:
        nbd_layers(a[1], a[2], a[3], a[4], a[5], int(a[6]), int(a[7]), int(a[8]))
    else:
        sys.exit(__doc__)
