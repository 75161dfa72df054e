"""MaxSim for 8 or more query vectors: a register-tiled outer-product micro-kernel in LLVM IR, and its loop.

Why IR: with 8-16 query vectors scoring is bound by arithmetic, not memory, and the dot-product tile of
:mod:`metaembed.fused_maxsim` wastes it on horizontal sums and on reloading candidate vectors. The fast
shape is the GEMM micro-kernel's outer product (each candidate element broadcast once, multiplied into
a register of query lanes), but numba has no vector types and LLVM does not find it from scalar code
(measured: scalar FMAs and spills), so it is written here as explicit vector IR inside a numba
``@intrinsic``. No library offers it over token-major half-precision storage (see fused_maxsim).

Layout ("pair" packing): a group of 8 query vectors fills one 16-float register as
``[y[2k, 0], y[2k+1, 0], y[2k, 1], y[2k+1, 1], ...]``, so one 8-byte broadcast of a candidate's
elements ``(2k, 2k+1)`` feeds every lane; adjacent lanes are summed at the end. Every lane is useful
from r_q = 8 up (r_q = 16 is two groups).
Registers: with AVX-512 a tile is 16 candidate vectors x one 16-float register (16 accumulators of
32); with AVX2 it is 6 x two 8-float registers (12 of 16), the shapes BLAS micro-kernels use.
Candidate vectors reach the micro-kernel copied (and widened) into fixed-stride pieces, in two
buffers: while it scores one tile it copies the next one into the other buffer, so the copy runs in
issue slots the arithmetic leaves idle (against copying between tiles, in alternating A/B runs on 2
threads: 7-24 % faster per shape). Each loop step copies one whole piece of one candidate vector, so a
step has one source and one target address (16 vectors' addresses per step made LLVM spill them, and the
reloads and indexed stores competed with the broadcasts for the load ports: measured up to 20 % slower).

The loop (:func:`outer_kernel`) lives here with the micro-kernel on purpose: numba's on-disk cache is
invalidated by changes to the kernel's own source file only.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

from metaembed.widening import widen, widen_bits

#: Query vectors per packed group, and floats per group row (two candidate elements per vector).
GROUP = 8
GROUP_LANES = 2 * GROUP
#: Candidate vectors reach the micro-kernel in pieces of this many elements at a fixed stride, so each
#: broadcast is one load with a constant offset (a runtime stride made LLVM keep 16 row pointers and
#: spill them). Even, so no piece splits a pair.
CHUNK = 128
#: Steps of the main loop unrolled into one body (fewer loop and address instructions per FMA).
_UNROLL = 4


def _has_avx512() -> bool:
    """Whether numba compiles for AVX-512 (its target follows NUMBA_CPU_FEATURES when set)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


#: (floats per register, registers per tile row, candidate vectors per tile) for this machine.
LANES, VECTORS, TILE_ROWS = (16, 1, 16) if _has_avx512() else (8, 2, 6)

_F32, _F64, _I32, _I64 = ir.FloatType(), ir.DoubleType(), ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)
_PAIRS = ir.VectorType(_F64, LANES // 2)


def _const(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _splat(builder: ir.IRBuilder, value: ir.Value, vec_type: ir.VectorType) -> ir.Value:
    undef = ir.Constant(vec_type, ir.Undefined)
    mask = ir.Constant(ir.VectorType(_I32, vec_type.count), [0] * vec_type.count)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(_I32, 0)), undef, mask)


#: Pair steps the micro-kernel's loop runs per candidate vector of a tile while it copies the next tile:
#: each unrolled step copies one piece of one candidate vector, so a full piece's steps copy them all.
COPY_STEPS = TILE_ROWS * _UNROLL
assert COPY_STEPS <= CHUNK // 2, "a piece must have a loop step for each candidate vector of the tile"
_COPIED = ir.VectorType(_F32, LANES)


def _widened(builder: ir.IRBuilder, src: ir.Value, storage: types.Type) -> ir.Value:
    """LANES stored elements from ``src`` as fp32 (:func:`metaembed.widening.widen`, a vector at a time)."""
    element, size = (_F32, 4) if storage == types.float32 else (ir.IntType(16), 2)
    bits = builder.load(builder.bitcast(src, ir.VectorType(element, LANES).as_pointer()), align=size)
    return widen_bits(builder, bits, storage)


@intrinsic
def pair_tile(typingctx, rows, dim, packed, best, best_row, col, store, sources, next_rows, ahead_byte, load_next):
    """Score one tile against one query group, raise its running maxima, and load the next tile meanwhile.

    ``rows (chunks, TILE_ROWS, CHUNK)`` fp32: the tile's candidate vectors, cut into CHUNK-long pieces
    (a compiled-in stride, so every broadcast is one load with a constant offset); ``packed
    (ceil(dim/2), 16)`` the group's pair-packed queries; ``best`` fp32 with room for rows
    ``best_row .. best_row + TILE_ROWS - 1``: lane ``col + 2i`` of row ``best_row + t`` becomes
    max(itself, <candidate t, query vector i>). The sums stay in registers for the whole of D.
    If ``load_next``, rows ``sources`` of the 2-D ``store`` (the next tile) are widened into ``next_rows``
    as the loop goes, all their full CHUNK-long pieces (interleaved with the arithmetic, the copy runs
    in ports it leaves idle instead of after it), and a tile's worth of ``store``'s bytes from byte
    ``ahead_byte`` on (the tile after) are prefetched, so that memory overlaps both.
    """
    if not (isinstance(rows, types.Array) and rows.dtype == types.float32 and rows.ndim == 3 and rows.layout == "C"
            and next_rows == rows):
        return None

    def codegen(context, builder, sig, args):
        rows_ty, packed_ty, best_ty, store_ty, sources_ty = (sig.args[i] for i in (0, 2, 3, 6, 7))
        if LANES > 8:  # cascadelake-class targets prefer 256-bit code; this function needs 512-bit registers
            set.add(builder.function.attributes, '"min-legal-vector-width"="512"')  # llvmlite knows no key=value
        data = context.make_array(rows_ty)(context, builder, args[0]).data
        next_data = context.make_array(rows_ty)(context, builder, args[8]).data
        queries = context.make_array(packed_ty)(context, builder, args[2]).data
        best_arr = context.make_array(best_ty)(context, builder, args[3])
        store_data = context.make_array(store_ty)(context, builder, args[6]).data
        sources = context.make_array(sources_ty)(context, builder, args[7]).data
        dim, best_row, col, ahead_byte = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 4, 5, 9))
        loading = context.cast(builder, args[10], sig.args[10], types.boolean)
        i8p = ir.IntType(8).as_pointer()
        ahead = builder.gep(builder.bitcast(store_data, i8p), [ahead_byte])
        step_bytes = 2 * TILE_ROWS * context.get_abi_sizeof(context.get_data_type(store_ty.dtype))
        lines = -(-_UNROLL * step_bytes // 64)  # per unrolled iteration: the next tile's bytes for as many pairs
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [_I32] * 3), "llvm.prefetch.p0")
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fmuladd.v{LANES}f32")
        zero = ir.Constant(_VEC, [0.0] * LANES)
        # Allocas that LLVM promotes to registers: the loops never touch the sums in memory.
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS)] for _ in range(TILE_ROWS)]

        def two_elements(ptr):  # one 8-byte load, repeated across the register
            pair = builder.load(builder.bitcast(ptr, _F64.as_pointer()), align=4)
            return builder.bitcast(_splat(builder, pair, _PAIRS), _VEC)

        def last_element(ptr):  # its partner lanes in `packed` are zero
            return _splat(builder, builder.load(ptr), _VEC)

        pieces = builder.udiv(builder.add(dim, _const(CHUNK - 1)), _const(CHUNK))
        with cgutils.for_range(builder, pieces) as piece_loop:
            piece = piece_loop.index
            piece_data = builder.gep(data, [builder.mul(piece, _const(TILE_ROWS * CHUNK))])
            lo = builder.mul(piece, _const(CHUNK))
            end = builder.add(lo, _const(CHUNK))
            hi = builder.select(builder.icmp_signed("<", dim, end), dim, end)
            first, stop = builder.udiv(lo, _const(2)), builder.udiv(hi, _const(2))
            unrolled = builder.add(first, builder.mul(builder.udiv(builder.sub(stop, first), _const(_UNROLL)),
                                                      _const(_UNROLL)))

            def step(k, broadcast):
                """Elements (2k, 2k+1) of every candidate vector, or the odd last one, into the sums."""
                query_row = builder.gep(queries, [builder.mul(k, _const(GROUP_LANES))])
                ys = [builder.load(builder.bitcast(builder.gep(query_row, [_const(LANES * v)]), _VEC.as_pointer()),
                                   align=4) for v in range(VECTORS)]
                offset = builder.sub(builder.mul(k, _const(2)), lo)
                for t in range(TILE_ROWS):
                    splat = broadcast(builder.gep(piece_data, [builder.add(offset, _const(t * CHUNK))]))
                    for v in range(VECTORS):
                        builder.store(builder.call(fmuladd, [splat, ys[v], builder.load(accs[t][v])]), accs[t][v])

            def unrolled_loop(begin, end, prefetching, copying):
                """The main loop over pair steps [begin, end). What it loads besides is decided outside
                it (a branch inside made LLVM spill the sums): if ``copying``, unrolled step number t
                copies candidate vector t's piece of the next tile."""
                with cgutils.for_range_slice(builder, begin, end, _const(_UNROLL)) as (k, _):
                    for u in range(_UNROLL):
                        step(builder.add(k, _const(u)), two_elements)
                    if prefetching:
                        line0 = builder.gep(ahead, [builder.mul(k, _const(step_bytes))])
                        for line in range(lines):  # a prefetch never faults, whatever the address
                            builder.call(prefetch, [builder.gep(line0, [_const(64 * line)]),
                                                    ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
                    if copying:
                        t = builder.udiv(builder.sub(k, first), _const(_UNROLL))
                        row = builder.load(builder.gep(sources, [t]))
                        src = builder.gep(store_data, [builder.add(builder.mul(row, dim), lo)])
                        dst = builder.gep(next_data, [builder.mul(builder.add(builder.mul(piece, _const(TILE_ROWS)), t),
                                                                  _const(CHUNK))])
                        for v in range(CHUNK // LANES):
                            builder.store(_widened(builder, builder.gep(src, [_const(LANES * v)]), store_ty.dtype),
                                          builder.bitcast(builder.gep(dst, [_const(LANES * v)]),
                                                          _COPIED.as_pointer()), align=4)

            full = builder.icmp_signed("==", builder.sub(hi, lo), _const(CHUNK))
            with builder.if_else(loading) as (then, otherwise):
                with then, builder.if_else(full) as (whole, partial):
                    with whole:  # only full pieces are copied here (a partial one is left to the caller)
                        copied = builder.add(first, _const(COPY_STEPS))
                        unrolled_loop(first, copied, prefetching=True, copying=True)
                        unrolled_loop(copied, unrolled, prefetching=True, copying=False)
                    with partial:
                        unrolled_loop(first, unrolled, prefetching=True, copying=False)
                with otherwise:
                    unrolled_loop(first, unrolled, prefetching=False, copying=False)
            with cgutils.for_range_slice(builder, unrolled, stop, _const(1)) as (k, _):
                step(k, two_elements)
            with builder.if_then(builder.icmp_unsigned("!=", builder.urem(hi, _const(2)), _const(0))):
                step(stop, last_element)

        swap = ir.Constant(ir.VectorType(_I32, LANES), [i ^ 1 for i in range(LANES)])
        for t in range(TILE_ROWS):
            for v in range(VECTORS):
                acc = builder.load(accs[t][v])
                dots = builder.fadd(acc, builder.shuffle_vector(acc, acc, swap))  # lane 2i: the whole dot product
                index = [builder.add(best_row, _const(t)), builder.add(col, _const(LANES * v))]
                target = cgutils.get_item_pointer(context, builder, best_ty, best_arr, index, wraparound=False)
                target = builder.bitcast(target, _VEC.as_pointer())
                old = builder.load(target, align=4)
                builder.store(builder.select(builder.fcmp_ordered("<", old, dots), dots, old), target, align=4)
        return context.get_dummy_value()

    return types.none(rows, dim, packed, best, best_row, col, store, sources, next_rows, ahead_byte,
                      load_next), codegen


#: Candidates whose running maxima the outer-product kernel keeps while it streams each token's slab
#: (1024 x 16 query vectors x 2 lanes x 4 bytes = 128 KiB at r_q = 16, within a core's L2).
SPAN = 1024


@njit(nogil=True, cache=True, inline="always")
def _tile_origin(tile, tiles, s0, token_stride):
    """Where a span's tile number ``tile`` (token-outer order) lies: its token's first store row, and
    its first candidate."""
    return (tile // tiles) * token_stride, s0 + (tile % tiles) * TILE_ROWS


@njit(nogil=True, cache=True, inline="always")
def _tile_sources(sources, tile, tiles, s0, s1, token_stride):
    """Fill ``sources`` with the store rows of a span's tile; a partial tile repeats the span's last candidate."""
    base, c0 = _tile_origin(tile, tiles, s0, token_stride)
    for t in range(TILE_ROWS):
        sources[t] = base + min(c0 + t, s1 - 1)


@njit(nogil=True, cache=True, inline="always")
def _copy_rows(rows, store, sources, first):
    """Widen elements ``first ..`` of store rows ``sources`` into the pieces of ``rows``."""
    dim = store.shape[1]
    for t in range(TILE_ROWS):
        src = store[sources[t]]
        for piece in range(first // CHUNK, rows.shape[0]):
            lo, hi = max(piece * CHUNK, first), min((piece + 1) * CHUNK, dim)
            part, dst = src[lo:hi], rows[piece, t, lo - piece * CHUNK:]
            for d in range(part.shape[0]):
                dst[d] = widen(part[d])


@njit(nogil=True, cache=True)
def outer_kernel(packed, store, token_stride, r_c, r_q, start, stop, out):
    """Write ``out[b, c]`` for candidates ``c`` in ``[start, stop)``, as fused_maxsim's dot-product kernel.

    ``packed (groups, ceil(D/2), 16)``: the batch's flat query vectors, pair-packed (:func:`pack_queries`);
    query vector i's running max sits in column 2i of ``best``. Token-outer order: for each span of
    candidates, each token's slab is read front to back (one sequential stream). Candidate vectors are
    copied into two tile buffers in turn, even when fp32: the micro-kernel reads CHUNK-long pieces at a
    compiled-in stride, and fills one buffer while it scores the other.
    """
    dim, groups = store.shape[1], packed.shape[0]
    best = np.empty((SPAN + TILE_ROWS, groups * GROUP_LANES), np.float32)  # a partial tile writes past the span
    buffers = np.empty((2, (dim + CHUNK - 1) // CHUNK, TILE_ROWS, CHUNK), np.float32)
    sources = np.empty(TILE_ROWS, np.int64)
    copied_by_kernel = dim - dim % CHUNK
    for s0 in range(start, stop, SPAN):
        s1 = min(s0 + SPAN, stop)
        best[:] = -np.inf
        tiles = (s1 - s0 + TILE_ROWS - 1) // TILE_ROWS
        last_tile = r_c * tiles - 1
        _tile_sources(sources, 0, tiles, s0, s1, token_stride)
        _copy_rows(buffers[0], store, sources, 0)
        for tile in range(last_tile + 1):
            c0 = _tile_origin(tile, tiles, s0, token_stride)[1]
            more = tile < last_tile
            if more:
                _tile_sources(sources, tile + 1, tiles, s0, s1, token_stride)
            ahead_base, ahead_c0 = _tile_origin(min(tile + 2, last_tile), tiles, s0, token_stride)
            ahead = (ahead_base + ahead_c0) * store.strides[0]
            rows, next_rows = buffers[tile % 2], buffers[(tile + 1) % 2]
            for g in range(groups):
                pair_tile(rows, dim, packed[g], best, c0 - s0, g * GROUP_LANES, store, sources, next_rows, ahead,
                          more and g == 0)
            if more:  # a partial last piece, which the micro-kernel does not copy
                _copy_rows(next_rows, store, sources, copied_by_kernel)
        for k in range(s1 - s0):
            for b in range(out.shape[0]):
                total = np.float32(0)
                for i in range(b * r_q, (b + 1) * r_q):
                    total += best[k, 2 * i]
                out[b, s0 + k] = total


def pack_queries(flat_queries: torch.Tensor) -> torch.Tensor:
    """``(rows, D)`` fp32 -> ``(ceil(rows/8), ceil(D/2), 16)`` pair-packed groups, zero-padded.

    Lane ``2i + e`` of row ``k`` of group ``g`` is element ``2k + e`` of query vector ``8g + i``; padded
    query vectors and the odd last element's partner are zero, so they add nothing.
    """
    rows, dim = flat_queries.shape
    groups, pairs = -(-rows // GROUP), -(-dim // 2)
    padded = torch.zeros(groups * GROUP, pairs * 2, dtype=torch.float32)
    padded[:rows, :dim] = flat_queries
    return padded.view(groups, GROUP, pairs, 2).permute(0, 2, 1, 3).reshape(groups, pairs, GROUP_LANES).contiguous()
