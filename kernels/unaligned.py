"""Unaligned 8-byte loads and stores for Numba kernels that move bytes at odd offsets.

`store8(buf, i, value)` writes `value`'s 8 bytes in the machine's byte order at buf[i:i + 8] of a
1-D uint8 array, at any offset (LLVM `store i64 ..., align 1`); `load8(buf, i)` reads them back as
a uint64, so a load8/store8 pair copies bytes unchanged on any machine. Byte loops over a padded
half's rows ran at 1.4 GB/s (32x32 RGB beside 28x28 RGB, one core); 8-byte moves with constant
trip counts, 8.4 GB/s. Replicating a grey pixel to RGB is three byte stores; writing two
pixels' six bytes with one 8-byte store (the next store overwriting the two extra bytes) is what
lets the padded page kernel keep up with plain copies. No bounds check: the caller keeps
i + 8 <= len(buf). The kernels that use it are compared with their NumPy twins, which is where
this is tested.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def store8(typingctx, array, index, value):
    if (not isinstance(array, types.Array) or array.ndim != 1 or array.dtype != types.uint8
            or not isinstance(index, types.Integer) or not isinstance(value, types.Integer)):
        return None
    sig = types.void(array, index, value)

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        arr = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, arr, [args[1]], wraparound=False)
        i64 = ir.IntType(64)
        v = context.cast(builder, args[2], signature.args[2], types.uint64)
        store = builder.store(v, builder.bitcast(ptr, i64.as_pointer()))
        store.align = 1
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def load8(typingctx, array, index):
    if (not isinstance(array, types.Array) or array.ndim != 1 or array.dtype != types.uint8
            or not isinstance(index, types.Integer)):
        return None
    sig = types.uint64(array, index)

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        arr = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, arrty, arr, [args[1]], wraparound=False)
        load = builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()))
        load.align = 1
        return load

    return sig, codegen
