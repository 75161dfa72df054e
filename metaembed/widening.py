"""Reading half-precision storage in numba: the bits travel as integers, widened to fp32 in registers.

numba has no bf16 or fp16 type, so a bf16 store is handed over as uint16 and fp16 as int16 (the element
type tells the format), and these helpers turn one element into fp32 with one or two instructions.
"""

from __future__ import annotations

import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

#: How each storage dtype is handed to numba kernels.
BITS_AS = {torch.float32: torch.float32, torch.bfloat16: torch.uint16, torch.float16: torch.int16}


def widen_bits(builder: ir.IRBuilder, bits: ir.Value, storage: types.Type) -> ir.Value:
    """fp32 from stored values (one, or a vector of them), told apart by the storage element type.

    fp32 is returned as is; bf16 (uint16 bits) is the top half of an fp32, so it is zero-extended and
    shifted (vpmovzxwd + vpslld); fp16 (int16 bits) is converted (vcvtph2ps). Shared by the scalar
    :func:`widen` and the vector copy of :mod:`metaembed.outer_maxsim`.
    """
    if storage == types.float32:
        return bits
    count = bits.type.count if isinstance(bits.type, ir.VectorType) else None

    def shaped(element: ir.Type) -> ir.Type:
        return element if count is None else ir.VectorType(element, count)

    if storage == types.uint16:
        sixteen = ir.Constant(shaped(ir.IntType(32)), 16 if count is None else [16] * count)
        return builder.bitcast(builder.shl(builder.zext(bits, shaped(ir.IntType(32))), sixteen), shaped(ir.FloatType()))
    return builder.fpext(builder.bitcast(bits, shaped(ir.HalfType())), shaped(ir.FloatType()))


@intrinsic
def _bf16_to_f32(typingctx, bits):
    def codegen(context, builder, sig, args):
        return widen_bits(builder, args[0], types.uint16)

    return types.float32(types.uint16), codegen


@intrinsic
def _fp16_to_f32(typingctx, bits):
    def codegen(context, builder, sig, args):
        return widen_bits(builder, args[0], types.int16)

    return types.float32(types.int16), codegen


def widen(value):
    raise NotImplementedError("only callable from numba-compiled code")


@overload(widen, inline="always")
def _widen_overload(value):
    """The storage format is told by the element type: fp32 as is, bf16 as uint16, fp16 as int16."""
    if value == types.float32:
        return lambda value: value
    if value == types.uint16:
        return lambda value: _bf16_to_f32(value)
    if value == types.int16:
        return lambda value: _fp16_to_f32(value)
    return None
