#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes small valid GGUF files as the fuzzer's seed corpus: every value type, a nested array, and three
# tensors (F32, Q4_0, Q6_K). Run: python3 tests/fuzz/make-seed.py tests/fuzz/corpus
import struct, sys, os

def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b

def kv(key, t, payload):
    return s(key) + struct.pack('<I', t) + payload

def build(alignment):
    meta = [
        kv('general.architecture', 8, s('llama')),
        kv('general.alignment', 4, struct.pack('<I', alignment)),
        kv('t.u8', 0, struct.pack('<B', 7)), kv('t.i8', 1, struct.pack('<b', -7)),
        kv('t.u16', 2, struct.pack('<H', 700)), kv('t.i16', 3, struct.pack('<h', -700)),
        kv('t.i32', 5, struct.pack('<i', -70000)), kv('t.f32', 6, struct.pack('<f', 0.5)),
        kv('t.bool', 7, b'\x01'), kv('t.u64', 10, struct.pack('<Q', 1 << 40)),
        kv('t.i64', 11, struct.pack('<q', -(1 << 40))), kv('t.f64', 12, struct.pack('<d', 0.25)),
        kv('t.strs', 9, struct.pack('<IQ', 8, 2) + s('a') + s('bc')),
        kv('t.nested', 9, struct.pack('<IQ', 9, 2) + struct.pack('<IQ', 0, 2) + b'\x01\x02'
           + struct.pack('<IQ', 6, 1) + struct.pack('<f', 1.0)),
    ]
    tensors = [('a', [8, 2], 0, 64), ('b', [32], 2, 18), ('c', [256], 14, 210)]
    infos, off = b'', 0
    for name, ne, t, size in tensors:
        infos += s(name) + struct.pack('<I', len(ne)) + b''.join(struct.pack('<Q', n) for n in ne)
        infos += struct.pack('<IQ', t, off)
        off += (size + alignment - 1) // alignment * alignment
    out = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(meta)) + b''.join(meta) + infos
    out += b'\0' * ((-len(out)) % alignment)
    for i, (_, _, _, size) in enumerate(tensors):
        data = bytes((i * 31 + j * 7 + 1) & 0xff for j in range(size))
        out += data + b'\0' * ((-size) % alignment)
    return out

os.makedirs(sys.argv[1], exist_ok=True)
for a in (32, 64):
    with open(os.path.join(sys.argv[1], f'seed-align{a}.gguf'), 'wb') as f:
        f.write(build(a))

# A safetensors file for fuzz-safetensors: metadata and two tensors (F32, BF16).
header = (b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
          b'"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}')
with open(os.path.join(sys.argv[1], 'seed-tiny.safetensors'), 'wb') as f:
    f.write(struct.pack('<Q', len(header)) + header + bytes(range(22)))
