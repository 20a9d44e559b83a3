#!/usr/bin/env python3
"""Snapshot layers for bench/run.sh: the same overwrites for blockfork and qcow2.

Layer i overwrites PER_LAYER random 4 KiB blocks chosen by seed i, with byte i
(a smaller PER_LAYER gives a prefix of the same blocks).

  layers.py qemu-chain PREFIX BACKING SIZE_BYTES LAYERS PER_LAYER CLUSTER
      a qcow2 backing chain PREFIX<i>.qcow2 (i zero-padded, 1..LAYERS; 1 over
      BACKING, each next over the one before) with layer i's overwrites in
      PREFIX<i>.qcow2. Each overwritten 4 KiB block is written as the whole
      cluster around it, which is what qemu's copy-on-write allocates in a
      live chain; so a layer can be written with its backing file closed
      (O(1) per layer instead of opening the chain below it). Same clusters
      allocated; only their content differs. Two qemu-img and one qemu-io
      process in all: qemu-img create costs tens of ms per image (it syncs),
      so layers 2.. are copies of one template with the backing file name
      patched in, which is why the names are zero-padded to one length.
      Checks the finished chain's headers before returning.

  layers.py nbd HOST PORT EXPORT API_URL LUN SIZE_BYTES LAYERS PER_LAYER
      for i in 1..LAYERS: snapshot LUN as s<i> through the REST API, then
      write layer i over NBD (pipelined) on one connection, then FLUSH.

  layers.py clone-chain HOST PORT SIZE_BYTES LEVELS PER_LAYER SOURCE -- CLI...
      for i in 1..LEVELS: `CLI lun clone create FROM c<i>` (FROM: SOURCE,
      then c<i-1>@s), write layer i to c<i> over NBD, FLUSH, then
      `CLI snapshot create c<i> s`. Through the CLI as a user would; one
      process for the chain, as a Python start per level costs more than
      the level itself.
"""
import json
import os
import random
import socket
import struct
import subprocess
import sys
import urllib.request

BLOCK = 4096


def offsets(size, layer, per_layer):
    rng = random.Random(layer)
    return [rng.randrange(size // BLOCK) * BLOCK for _ in range(per_layer)]


def qcow2_backing_field(head):
    """(offset, length) of the backing file name in a qcow2 header."""
    assert head[:4] == b"QFI\xfb", "not a qcow2 image"
    off, = struct.unpack(">Q", head[8:16])
    n, = struct.unpack(">I", head[16:20])
    return off, n


def qcow2_backing(path):
    """The backing file name in a qcow2 image's header, or None."""
    with open(path, "rb") as f:
        head = f.read(4096)
    off, n = qcow2_backing_field(head)
    if off == 0:
        return None
    assert off + n <= len(head), f"{path}: backing file name outside the first 4 KiB"
    return head[off:off + n].decode()


def qemu_chain(prefix, backing, size, layers, per_layer, cluster):
    width = len(str(layers))
    name = [backing] + [f"{prefix}{i:0{width}}.qcow2" for i in range(1, layers + 1)]

    def create(path, backing_name):
        subprocess.run(["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", backing_name,
                        "-F", "qcow2", path, str(size)], check=True)

    create(name[1], backing)
    if layers > 1:
        template_path = f"{prefix}-template.qcow2"
        create(template_path, name[1])
        with open(template_path, "rb") as f:
            template = f.read()
        os.unlink(template_path)
        at = template.index(name[1].encode())
        assert template.count(name[1].encode()) == 1 and qcow2_backing_field(template) == (at, len(name[1]))
        for i in range(2, layers + 1):
            assert len(name[i - 1]) == len(name[1])
            with open(name[i], "wb") as f:
                f.write(template[:at] + name[i - 1].encode() + template[at + len(name[1]):])

    script = []
    for i in range(1, layers + 1):
        spec = {"driver": "qcow2", "file": {"driver": "file", "filename": name[i]}, "backing": None}
        script.append(f"open -t unsafe json:{json.dumps(spec, separators=(',', ':'))}")
        seen = set()
        for off in offsets(size, i, per_layer):
            c = off - off % cluster
            if c not in seen:
                seen.add(c)
                script.append(f"write -P {i % 256} {c} {min(cluster, size - c)}")
        script.append("close")
    run = subprocess.run(["qemu-io"], input="\n".join(script) + "\n", capture_output=True, text=True)
    if run.returncode != 0 or "failed" in run.stdout:
        sys.exit(f"qemu-io writing {prefix} layers failed:\n{run.stderr[-2000:]}{run.stdout[-2000:]}")

    # Read the chain back from the top, as qemu will open it.
    for i in range(layers, 0, -1):
        got = qcow2_backing(name[i])
        assert got == name[i - 1], f"{name[i]} is backed by {got!r}, not {name[i - 1]!r}"


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


def nbd_write_layer(s, size, layer, per_layer):
    payload = bytes([layer % 256]) * BLOCK
    offs = offsets(size, layer, per_layer)
    for h, off in enumerate(offs):
        nbd_cmd(s, h, 1, off, payload)  # WRITE
    nbd_replies(s, len(offs))


def nbd_close(s):
    nbd_cmd(s, 0, 3, length=0)  # FLUSH
    nbd_replies(s, 1)
    nbd_cmd(s, 0, 2, length=0)  # DISC
    s.close()


def nbd_layers(host, port, export, api, lun, size, layers, per_layer):
    s = nbd_connect(host, int(port), export)
    for i in range(1, layers + 1):
        body = json.dumps({"lun": lun, "name": f"s{i}"}).encode()
        req = urllib.request.Request(f"{api}/api/v1/snapshots", data=body, method="POST",
                                     headers={"content-type": "application/json",
                                              "authorization": "Bearer " + os.environ.get("BLOCKFORK_TOKEN", "")})
        urllib.request.urlopen(req, timeout=60).read()
        nbd_write_layer(s, size, i, per_layer)
    nbd_close(s)


def clone_chain(host, port, size, levels, per_layer, source, cli):
    def run(*args):
        r = subprocess.run(cli + list(args), capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(args)} failed: {r.stderr.strip()}")

    parent = source
    for i in range(1, levels + 1):
        run("lun", "clone", "create", parent, f"c{i}")
        s = nbd_connect(host, int(port), f"c{i}")
        nbd_write_layer(s, size, i, per_layer)
        nbd_close(s)
        run("snapshot", "create", f"c{i}", "s")
        parent = f"c{i}@s"


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["qemu-chain"] and len(a) == 7:
        qemu_chain(a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]))
    elif a[:1] == ["nbd"] and len(a) == 9:
        nbd_layers(a[1], a[2], a[3], a[4], a[5], int(a[6]), int(a[7]), int(a[8]))
    elif a[:1] == ["clone-chain"] and len(a) > 8 and a[7] == "--":
        clone_chain(a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6], a[8:])
    else:
        sys.exit(__doc__)
