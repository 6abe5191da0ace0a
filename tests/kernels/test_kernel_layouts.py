"""Host-side checks of the CUDA kernels' layout arithmetic, runnable without a GPU.

The tensor-core kernels depend on index mappings that are easy to get subtly wrong: which k each lane loads,
how mma.sync m16n8k16 fragments map to matrix elements, ldmatrix addressing, byte-permute decoding, and the
order of the quest sums across lanes. These tests re-implement those mappings exactly as the kernels write
them (csrc/cuda/rotate_quantize.cu, csrc/core/w4a16_layout.h, csrc/cuda/w4a16_common.cuh) and check that the
emulated warp computes the intended product. The fragment layout itself is the PTX ISA's (mma.m16n8k16, ldmatrix .m8n8 .x4).
The sections name the kernel file they transcribe."""

import numpy as np
import pytest
import torch

from fpquant_ext import formats as ref
from kernel_emulation import blocked_offset, prmt

# ---- PTX semantics ---------------------------------------------------------------------------------------


def mma_fragments_to_matrices(a_regs, b_regs):
    """a_regs[lane] = 4 pairs, b_regs[lane] = 2 pairs (each pair = (lower-k value, higher-k value)) ->
    logical A [16, 16] and B [16, 8] of mma.m16n8k16 (row.col)."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for lane in range(32):
        g, q = lane // 4, lane % 4
        (a0, a1, a2, a3), (b0, b1) = a_regs[lane], b_regs[lane]
        for t in range(2):
            A[g, 2 * q + t], A[g + 8, 2 * q + t] = a0[t], a1[t]
            A[g, 2 * q + 8 + t], A[g + 8, 2 * q + 8 + t] = a2[t], a3[t]
            B[2 * q + t, g], B[2 * q + 8 + t, g] = b0[t], b1[t]
    return A, B


def c_fragment(C, lane):
    g, q = lane // 4, lane % 4
    return C[g, 2 * q], C[g, 2 * q + 1], C[g + 8, 2 * q], C[g + 8, 2 * q + 1]


# ---- packed W4A16 weights (csrc/core/w4a16_layout.h) and their decode (csrc/cuda/w4a16_common.cuh) ---------


def halves(word: int, dtype) -> tuple:
    t = torch.tensor([word & 0xFFFF, word >> 16], dtype=torch.int32).to(torch.int16)
    return tuple(t.view(dtype).float().tolist())


def e2m1_bits8(w: int, bf16: bool) -> list:
    """w4a16_common.cuh e2m1_bits8: word w -> o[j] = (nibble j, nibble j + 4) as 16-bit patterns worth
    code * 2^-126 (bf16) or code * 2^-14 (fp16)."""
    v = w >> 8
    if bf16:
        return [(((a & m) * f) & 0xFFFFFFFF) & 0x81C081C0
                for a, m, f in ((w, 0x000F000F, 0x1040), (w, 0x00F000F0, 0x0104), (v, 0x000F000F, 0x1040),
                                (v, 0x00F000F0, 0x0104))]
    t = [((w & 0x000F000F) << 9), ((w & 0x00F000F0) << 5), ((v & 0x000F000F) << 9), ((v & 0x00F000F0) << 5)]
    return [(x + (x & 0x10001000) * 7) & 0xFFFFFFFF for x in t]


@pytest.mark.parametrize("dtype,unit", [(torch.bfloat16, 2.0**126), (torch.float16, 2.0**14)])
def test_e2m1_bits8_every_code_in_every_nibble(dtype, unit):
    rng = np.random.default_rng(0)
    for pos in range(8):
        for code in range(16):
            others = int(rng.integers(0, 2**32))
            w = (others & ~(0xF << (4 * pos)) | (code << (4 * pos))) & 0xFFFFFFFF
            got = halves(e2m1_bits8(w, dtype == torch.bfloat16)[pos % 4], dtype)[pos // 4] * unit
            want = ref.E2M1_VALUES[code].item()
            assert got == want and np.signbit(got) == np.signbit(want), (pos, code, got, want)


def packed_position(n: int, k: int, K: int) -> tuple:
    """Where the code of (row n, column k) lives in the layout of core/w4a16_layout.h: (byte offset, high nibble)."""
    t, a, r, kk = n // 16, k // 64, n % 16, k % 64
    h, g, s, j, q, e = r // 8, r % 8, kk // 16, (kk // 8) % 2, (kk // 2) % 4, kk % 2
    p = 4 * e + 2 * (s % 2) + j
    return (t * (K // 64) + a) * 512 + 16 * (4 * g + q) + 4 * (2 * h + s // 2) + p // 2, p % 2


def test_pack_op_puts_every_code_where_the_layout_says():
    import fpquant_ext as fq

    gen = torch.Generator().manual_seed(2)
    N, K = 48, 192
    codes = torch.randint(0, 256, (N, K // 2), generator=gen, dtype=torch.uint8)
    scales = torch.randint(0, 255, (N, K // 32), generator=gen, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    packed, pscales = fq.pack_w4a16(codes, scales, "mxfp4")
    flat, c = packed.reshape(-1).tolist(), codes.tolist()
    seen = set()
    for n in range(N):
        for k in range(K):
            byte, high = packed_position(n, k, K)
            seen.add((byte, high))
            assert (flat[byte] >> (4 * high)) & 0xF == (c[n][k // 2] >> (4 * (k % 2))) & 0xF, (n, k)
    assert len(seen) == N * K  # a bijection onto the packed nibbles
    ps, sc = pscales.view(torch.uint8).reshape(-1).tolist(), scales.view(torch.uint8).tolist()
    for n in range(N):
        for grp in range(K // 32):
            assert ps[((n // 16) * (K // 64) + grp // 2) * 32 + (n % 16) * 2 + grp % 2] == sc[n][grp]


def decode_atom(lane_bytes: bytes, s_rows: tuple, fmt: str, bf16: bool = True) -> list:
    """w4a16_common.cuh decode_atom with the multiply done in float64 (exact for the test data): f[s][0..3]."""
    unit = 2.0**126 if bf16 else 2.0**14
    dt = torch.bfloat16 if bf16 else torch.float16
    w = [int.from_bytes(lane_bytes[4 * u: 4 * u + 4], "little") for u in range(4)]
    f = [[None] * 4 for _ in range(4)]
    for h in range(2):
        for s2 in range(2):
            o = e2m1_bits8(w[2 * h + s2], bf16)
            for jj in range(4):
                s = 2 * s2 + jj // 2
                scale = s_rows[h][s2] if fmt == "mx" else s_rows[h][s]
                pair = tuple(v * unit * scale for v in halves(o[jj], dt))
                if jj % 2 == 0:
                    f[s][h] = pair
                else:
                    f[s][h + 2] = pair
    return f


@pytest.mark.parametrize("fmt", ["mx", "nv"])
def test_packed_atom_decodes_to_the_a_and_b_fragments(fmt):
    # Every lane's decode_atom of every atom, assembled through the mma.m16n8k16 fragment semantics, must give
    # the dequantized weight: as the A operand (16 rows x 16 k of k-step s: decode and wgmma kernels) and, read
    # as (f[s][h], f[s][h + 2]), as the B operand of row half h (8 features x 16 k: the mma.sync kernel).
    import fpquant_ext as fq

    gen = torch.Generator().manual_seed(3)
    N, K = 32, 128
    w = torch.randint(-6, 7, (N, K), generator=gen).float() * 0.5
    if fmt == "mx":
        codes, scales = ref.quantize_mxfp4(w)
        wd = ref.dequantize_mxfp4(codes, scales).double()
        decode_scale, per_row = ref.e8m0_decode, 2
    else:
        codes, scales = ref.quantize_nvfp4(w, torch.tensor([1.0]))
        wd = ref.dequantize_nvfp4(codes, scales, torch.tensor([1.0])).double()
        decode_scale, per_row = ref.e4m3_decode, 4
    packed, pscales = fq.pack_w4a16(codes, scales, "mxfp4" if fmt == "mx" else "nvfp4")
    sv = decode_scale(pscales.view(torch.uint8).reshape(-1)).double().tolist()
    for t in range(N // 16):
        for a in range(K // 64):
            atom = packed[t, a].numpy().tobytes()
            srow = lambda r: sv[(t * (K // 64) + a) * 16 * per_row + r * per_row:][:per_row]  # noqa: E731
            frags = [decode_atom(atom[16 * l: 16 * l + 16], (srow(l // 4), srow(l // 4 + 8)), fmt) for l in range(32)]
            for s in range(4):
                A, _ = mma_fragments_to_matrices([frags[l][s] for l in range(32)], [((0, 0), (0, 0))] * 32)
                tile = wd[16 * t: 16 * t + 16, 64 * a + 16 * s: 64 * a + 16 * s + 16].numpy()
                np.testing.assert_array_equal(A, tile)
                for h in range(2):
                    _, B = mma_fragments_to_matrices([((0, 0),) * 4] * 32,
                                                     [(frags[l][s][h], frags[l][s][h + 2]) for l in range(32)])
                    np.testing.assert_array_equal(B.T, tile[8 * h: 8 * h + 8])


def ldmatrix_x4(buf: np.ndarray, addr) -> list:
    """ldmatrix.m8n8.x4 (b16) over a [rows][values] buffer: lane 8m + r gives (row, first value) of row r of
    matrix m; thread (g, q) receives, for each m, the pair (2q, 2q + 1) of row g of matrix m."""
    out = []
    for lane in range(32):
        g, q = lane // 4, lane % 4
        regs = []
        for m in range(4):
            row, col = addr(8 * m + g)
            regs.append((buf[row, col + 2 * q], buf[row, col + 2 * q + 1]))
        out.append(regs)
    return out


def test_w4a16_activation_fragment_indices():
    # x's operand in the natural k order of the packed weight. Decode kernel: lane (g, q) stores its 32 values
    # (row g, k [32q, 32q + 32)) into the warp's buffer, and ldmatrix i, lane l addressing row l % 8 at value
    # 8 (l / 8) + 32 i, gives b0b1, b2b3 of k-steps 2 (i % 2) and + 1 of atom i / 2. mma.sync kernel: the A
    # fragment is pairs 8s + {0, 4} (+ q) of the atom, rows g and g + 8. Both must be the mma fragments of
    # x[:, 64a + 16s ... + 16].
    x = np.arange(16 * 128, dtype=np.float64).reshape(16, 128)
    buf = np.zeros((8, 128))
    for lane in range(32):
        g, q = lane // 4, lane % 4
        buf[g, 32 * q: 32 * q + 32] = x[g, 32 * q: 32 * q + 32]
    xc = {}
    for i in range(4):
        r = ldmatrix_x4(buf, lambda l: (l % 8, 8 * (l // 8) + 32 * i))  # noqa: B023
        a, s0 = i // 2, 2 * (i % 2)
        for lane in range(32):
            xc[lane, a, s0] = (r[lane][0], r[lane][1])
            xc[lane, a, s0 + 1] = (r[lane][2], r[lane][3])
    pair = lambda r, p: (x[r, 2 * p], x[r, 2 * p + 1])  # noqa: E731
    for a in range(2):
        for s in range(4):
            k0 = 64 * a + 16 * s
            _, B = mma_fragments_to_matrices([((0, 0),) * 4] * 32, [xc[lane, a, s] for lane in range(32)])
            np.testing.assert_array_equal(B.T, x[:8, k0: k0 + 16])
            col = (64 * a) // 2
            fa = [(pair(l // 4, col + 8 * s + l % 4), pair(l // 4 + 8, col + 8 * s + l % 4),
                   pair(l // 4, col + 8 * s + 4 + l % 4), pair(l // 4 + 8, col + 8 * s + 4 + l % 4)) for l in range(32)]
            A, _ = mma_fragments_to_matrices(fa, [((0, 0), (0, 0))] * 32)
            np.testing.assert_array_equal(A, x[:, k0: k0 + 16])


def test_w4a16_decode_x_buffer_reads_are_conflict_free():
    # ldmatrix phases (8 rows x 16 bytes of one 8-k block) on rows of 272 bytes cover 32 distinct banks.
    row = 128 * 2 + 16
    for i in range(4):
        for m in range(4):
            banks = [((r * row + 16 * (m + 4 * i)) // 4 + w) % 32 for r in range(8) for w in range(4)]
            assert sorted(banks) == list(range(32))


# ---- rotate_quantize_split.cu (float32 input; NVFP4 r = 16 with K % 32 != 0) ------------------------------


def perm_k(m: int, r: int) -> int:
    E = r // 4
    q, e = m // E, m % E
    s, j = e // 4, e % 4
    return 16 * s + (2 * q + j if j < 2 else 2 * q + 6 + j)


@pytest.mark.parametrize("r", [16, 32, 64, 128])
def test_perm_k_is_a_permutation(r):
    assert sorted(perm_k(m, r) for m in range(r)) == list(range(r))


@pytest.mark.parametrize("r", [16, 32, 64, 128])
def test_rotation_fragments_compute_x_times_r(r):
    rng = np.random.default_rng(r)
    X = rng.integers(-8, 8, size=(16, r)).astype(np.float64)  # one m-tile of chunk rows
    R = rng.integers(-8, 8, size=(r, r)).astype(np.float64)
    stride = r + 8
    smem = np.full((r * stride,), np.nan)  # b[n][k] = R[m][n], k = perm_k(m)
    for m in range(r):
        for n in range(r):
            smem[n * stride + perm_k(m, r)] = R[m, n]
    E = r // 4
    acc = np.zeros((32, r // 8, 4))
    for s in range(r // 16):
        a_regs = []
        for lane in range(32):
            g, q = lane // 4, lane % 4
            col = q * E + 4 * s
            a_regs.append(((X[g, col], X[g, col + 1]), (X[g + 8, col], X[g + 8, col + 1]),
                           (X[g, col + 2], X[g, col + 3]), (X[g + 8, col + 2], X[g + 8, col + 3])))
        for np_ in range(r // 16):
            # ldmatrix.x4: lane l addresses row (l % 8) of matrix (l / 8); thread T receives elements
            # (T / 4, 2 (T % 4) .. +1) of matrix i in register i.
            addr = []
            for lane in range(32):
                mat, rr = lane // 8, lane % 8
                addr.append(((2 * np_ + mat // 2) * 8 + rr) * stride + 16 * s + (mat % 2) * 8)
            regs = []
            for lane in range(32):
                row, c2 = lane // 4, 2 * (lane % 4)
                regs.append([tuple(smem[addr[8 * i + row] + c2 + t] for t in range(2)) for i in range(4)])
            for half in range(2):
                b_regs = [(regs[lane][2 * half], regs[lane][2 * half + 1]) for lane in range(32)]
                A, B = mma_fragments_to_matrices(a_regs, b_regs)
                C = A @ B
                for lane in range(32):
                    acc[lane, 2 * np_ + half] += c_fragment(C, lane)
    Y = X @ R
    for lane in range(32):
        g, q = lane // 4, lane % 4
        for nt in range(r // 8):
            n = 8 * nt + 2 * q
            assert tuple(acc[lane, nt]) == (Y[g, n], Y[g, n + 1], Y[g + 8, n], Y[g + 8, n + 1])


def test_quest_sums_across_a_quad_follow_tree_sum():
    # In-group column 8i + 2q + b of a 32-wide group sits in lane q's v[2i + b]; the kernel adds pairs
    # locally, then across lanes q^1 and q^2, then across i. It must equal formats.tree_sum bit for bit.
    rng = np.random.default_rng(5)
    for _ in range(200):
        group = torch.tensor(rng.standard_normal(32) * 10.0 ** rng.integers(-5, 5), dtype=torch.float32)
        v = {q: [group[8 * i + 2 * q + b] for i in range(4) for b in range(2)] for q in range(4)}
        p = {q: [v[q][2 * i] + v[q][2 * i + 1] for i in range(4)] for q in range(4)}
        p = {q: [p[q][i] + p[q ^ 1][i] for i in range(4)] for q in range(4)}
        p = {q: [p[q][i] + p[q ^ 2][i] for i in range(4)] for q in range(4)}
        sums = {q: (p[q][0] + p[q][1]) + (p[q][2] + p[q][3]) for q in range(4)}
        want = ref.tree_sum(group)
        for q in range(4):
            assert sums[q].view(torch.int32).item() == want.view(torch.int32).item()


def test_quantized_code_byte_positions():
    # Lane q's values for in-group columns 8i + 2q + {0,1} are packed into byte (8i + 2q) / 2 = 4i + q.
    for G in (16, 32):
        seen = sorted(4 * i + q for q in range(4) for i in range(G // 8))
        assert seen == list(range(G // 2))
        for q in range(4):
            for i in range(G // 8):
                assert (8 * i + 2 * q) // 2 == 4 * i + q


# ---- rotate_quantize_split.cu epilogue, end to end on exact data ------------------------------------------


def emulate_rotate_quantize(x, R, fmt, method="floor", layout="linear", g=None):
    """Python transcription of rotate_quantize_kernel's tiling and epilogue (per warp tile, per lane), fed
    with the accumulator fragments of Y = X @ R. With data whose products and sums are exact in float32 the
    kernel's accumulators equal Y, so the result must match the CPU operator bit for bit."""
    r = R.shape[0]
    G = 32 if fmt == "mx" else 16
    if fmt == "mx" and r < G:  # the glue widens r = 16 to diag(R, R)
        R = torch.block_diag(R, R)
        r = 32
    K = x.shape[-1]
    rows = x.numel() // K
    n_chunks = rows * K // r
    MT = 1 if r >= 64 else 2
    ROWS = 16 * MT
    Y = (x.double().reshape(n_chunks, r) @ R.double()).float()  # exact for the test data
    codes = torch.full((n_chunks * r // 2,), 0xEE, dtype=torch.uint8)  # poison
    gpr = K // G
    if layout == "linear":
        scales = torch.full((rows * gpr,), 0xEE, dtype=torch.uint8)
    else:
        pr, pc = -(-rows // 128) * 128, -(-gpr // 4) * 4
        scales = torch.zeros(pr * pc, dtype=torch.uint8)
    n_tiles = -(-n_chunks // ROWS)
    for tile in range(n_tiles):
        base = tile * ROWS
        stage = torch.full((ROWS * r // 2,), 0xEE, dtype=torch.uint8)
        for mi in range(MT):
            for h in range(2):
                for j in range(r // G):
                    NV = G // 4
                    # lanes of each quad (fixed g) hold one row's group
                    for gq in range(8):
                        row_in_tile = mi * 16 + h * 8 + gq
                        chunk = base + row_in_tile
                        yrow = Y[chunk] if chunk < n_chunks else torch.zeros(r)
                        vals = {}
                        for q in range(4):
                            v = []
                            for i in range(NV // 2):
                                nt = (G // 8) * j + i
                                v += [yrow[8 * nt + 2 * q], yrow[8 * nt + 2 * q + 1]]
                            vals[q] = torch.stack(v)
                        allv = torch.cat([vals[q] for q in range(4)])
                        finite = bool(torch.isfinite(allv).all())
                        amax = allv.abs().max()
                        group = torch.stack([yrow[G * j + c] for c in range(G)])
                        if fmt == "mx":
                            e = int(ref.mx_scale_exponent(group[None], method)[0]) if finite else 0
                            sc = e + 127 if finite else 0xFF
                            inv = ref._pow2(torch.tensor([-e]))[0]
                        else:
                            s = (amax / 6.0) * g
                            sc = int(ref.e4m3_encode_sat(s.reshape(1))[0]) if finite else 0x7F
                            d = ref.e4m3_decode(torch.tensor([sc], dtype=torch.uint8))[0] / g
                        for q in range(4):
                            v = vals[q]
                            for i in range(NV // 2):
                                if fmt == "mx":
                                    c = ref.e2m1_encode((v[2 * i : 2 * i + 2] * inv)) if finite else torch.zeros(2, dtype=torch.uint8)
                                else:
                                    c = ref.e2m1_encode(v[2 * i : 2 * i + 2] / d) if (finite and d > 0) else torch.zeros(2, dtype=torch.uint8)
                                stage[row_in_tile * (r // 2) + j * (G // 2) + 4 * i + q] = int(c[0]) | (int(c[1]) << 4)
                        if chunk < n_chunks:
                            flat = chunk * (r // G) + j
                            if layout == "linear":
                                scales[flat] = sc
                            else:
                                scales[blocked_offset(flat // gpr, flat % gpr, gpr)] = sc
        VB = min(16, r // 2)
        for vi in range(ROWS * (r // 2) // VB):
            row_in_tile = (vi * VB) // (r // 2)
            if base + row_in_tile < n_chunks:
                codes[base * (r // 2) + vi * VB : base * (r // 2) + (vi + 1) * VB] = stage[vi * VB : (vi + 1) * VB]
    codes = codes.reshape(*x.shape[:-1], K // 2)
    if layout == "linear":
        scales = scales.reshape(*x.shape[:-1], gpr)
    else:
        scales = scales.reshape(-(-rows // 128) * 128, -(-gpr // 4) * 4)
    return codes, scales


def assert_emulation_matches_cpu(emulate, x, R, fmt, method, layout):
    """A kernel emulation (codes, scales) equals the CPU operator bit for bit; NVFP4 with global scale 3.
    The exact test matrices are not orthogonal, which the operators reject, so the CPU operator quantizes
    ref.rotate(x, R): bit for bit what it does with rotation=R (test_rotations.py)."""
    import fpquant_ext as fq

    xr = ref.rotate(x, R)
    if fmt == "mx":
        want_c, want_s = fq.quantize_mxfp4(xr, method=method, scale_layout=layout)
        got_c, got_s = emulate(x, R, "mx", method, layout)
    else:
        g = torch.tensor([3.0])
        want_c, want_s = fq.quantize_nvfp4(xr, g, scale_layout=layout)
        got_c, got_s = emulate(x, R, "nv", layout=layout, g=g[0])
    assert torch.equal(got_c, want_c)
    assert torch.equal(got_s, want_s.view(torch.uint8))


@pytest.mark.parametrize("r", [16, 32, 128])
@pytest.mark.parametrize("fmt,method", [("mx", "floor"), ("mx", "quest"), ("mx", "ceil"), ("nv", None)])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_rotate_quantize_epilogue_matches_cpu_on_exact_data(r, fmt, method, layout):
    gen = torch.Generator().manual_seed(r)
    rows, K = 5, 256  # n_chunks not a multiple of the warp tile: exercises the row guards
    x = torch.randint(-6, 7, (rows, K), generator=gen).float()
    x[1, :32] = 0.0  # an all-zero group
    R = torch.randint(-1, 2, (r, r), generator=gen).float() * 0.5  # exact in bf16, products exact in fp32
    assert_emulation_matches_cpu(emulate_rotate_quantize, x, R, fmt, method, layout)


# ---- rotate_quantize.cu (16-bit input): smem swizzle, fragments, epilogue and code packing -----------------

E2M1_MAGIC_BITS = 0x4B000000


def swz(r: int, i: int, c: int) -> int:
    return c ^ (i & 7) if r >= 64 else c ^ ((i >> 1) & 3)


def out_col(nt: int, n: int) -> int:
    return 8 * (n // 2) + 2 * nt + (n % 2)


@pytest.mark.parametrize("r", [32, 64, 128])
def test_fast_rotation_smem_swizzle_is_a_conflict_free_permutation(r):
    C = r // 8
    rows = 64
    slots = sorted(i * C + swz(r, i, c) for i in range(rows) for c in range(C))
    assert slots == list(range(rows * C))
    # ldmatrix: 8 lanes address rows i0..i0+7 at one logical chunk; 16-byte bank groups must all differ.
    for i0 in range(0, rows, 8):
        for c in range(C):
            assert len({(i * C + swz(r, i, c)) % 8 for i in range(i0, i0 + 8)}) == 8


def test_fast_rotation_value_buffer_is_conflict_free():
    # 128-bit shared accesses are served 8 lanes at a time; each lane's 16 bytes must hit distinct bank groups
    # (chunk c of row i sits at c ^ (i & 7) in a 128-byte row).
    for mi in range(2):
        for h in range(2):
            for half in range(2):  # the two float4 stores of a lane
                for phase in range(4):
                    lanes = range(8 * phase, 8 * phase + 8)
                    rows = [mi * 16 + 8 * h + lane // 4 for lane in lanes]
                    groups = [(2 * (lane % 4) + half) ^ (row & 7) for lane, row in zip(lanes, rows)]
                    assert len(set(groups)) == 8
    for c in range(8):  # reads: lane t reads row t
        for phase in range(4):
            assert len({c ^ (t & 7) for t in range(8 * phase, 8 * phase + 8)}) == 8


def test_fast_rotation_output_columns_are_contiguous_per_thread():
    for q in range(4):
        assert sorted(out_col(nt, 2 * q + b) for nt in range(4) for b in range(2)) == list(range(8 * q, 8 * q + 8))
    assert sorted(out_col(nt, n) for nt in range(4) for n in range(8)) == list(range(32))


def sign_nibbles(sign_src):
    """cuda/encode.cuh sign_nibbles: sign-replicating byte permutes gather even / odd elements' signs into the
    bytes of two words; bit 3 (even) and bit 7 (odd) of each byte are the nibbles' sign bits."""
    u = [int(torch.tensor([float(v)], dtype=torch.float32).view(torch.int32).item()) % 2**32 for v in sign_src]
    even = prmt(prmt(u[0], u[2], 0xFBFB), prmt(u[4], u[6], 0xFBFB), 0x5410)
    odd = prmt(prmt(u[1], u[3], 0xFBFB), prmt(u[5], u[7], 0xFBFB), 0x5410)
    return (even & 0x08080808) | (odd & 0x80808080)


def pack8(q_vals, sign_src):
    """cuda/encode.cuh pack8 as integer arithmetic modulo 2^32: sum of grid-point bits * 16^k with the constant
    removed up front, then the sign nibbles ORed in."""
    w = (-(E2M1_MAGIC_BITS + (E2M1_MAGIC_BITS << 4))) % 2**32
    for k in range(8):
        code = int(ref.e2m1_encode(torch.tensor([float(q_vals[k])], dtype=torch.float32))[0])
        w = (w + (E2M1_MAGIC_BITS + (code & 7)) * 16**k) % 2**32
    return w | sign_nibbles(sign_src)


def test_pack8_equals_nibble_packing():
    rng = np.random.default_rng(11)
    vals = [0.0, -0.0, 0.25, -0.25, 0.75, 5.0, -5.0, 6.5, -1e30, 1e-30, -1e-30, 2.5, -3.5]
    for _ in range(300):
        q = torch.tensor(rng.choice(vals + list(rng.standard_normal(8) * 3), 8), dtype=torch.float32)
        codes = ref.e2m1_encode(q)
        assert pack8(q, q) == sum(int(codes[k]) << (4 * k) for k in range(8))


def emulate_fast_rotate_quantize(x, R, fmt, method="floor", layout="linear", g=None):
    """Python transcription of rotate_quantize.cu: R as c_j * (hi + lo) fragments, the swizzled smem tile read
    by ldmatrix, per-warp column groups, the swizzled value buffer (one row per lane) and pack8. Exact test data make the tensor-core
    sums exact, so the result must equal the CPU operator bit for bit."""
    r_in = R.shape[0]
    r = 32 if r_in == 16 else r_in
    Rv = torch.block_diag(R, R) if r_in == 16 else R.float()
    G = 32 if fmt == "mx" else 16
    K = x.shape[-1]
    rows = x.numel() // K
    n_chunks = rows * K // r
    CG, C = r // 32, r // 8
    RG = 8 // CG
    MT = 2  # two 16-row m-tiles per warp, processed one after the other
    ROWS = RG * 16 * MT
    X = x.float().reshape(n_chunks, r)
    c = Rv.abs().amax(dim=0)
    c = torch.where(c == 0, torch.ones_like(c), c)
    rcp = (1.0 / c.double()).float()
    S = torch.where(Rv.abs() == c, torch.sign(Rv), Rv * rcp)
    hi = S.to(torch.bfloat16).float()
    lo = (S - hi).to(torch.bfloat16).float()
    codes = torch.full((n_chunks * r // 2,), 0xEE, dtype=torch.uint8)
    gpr = K // G
    if layout == "linear":
        scales = torch.full((rows * gpr,), 0xEE, dtype=torch.uint8)
    else:
        scales = torch.zeros(-(-rows // 128) * 128 * (-(-gpr // 4) * 4), dtype=torch.uint8)

    def b_regs(M, cg, s, nt):
        out = []
        for lane in range(32):
            gg, q = lane // 4, lane % 4
            col = 32 * cg + out_col(nt, gg)
            k0 = 16 * s + 2 * q
            out.append(((float(M[k0, col]), float(M[k0 + 1, col])), (float(M[k0 + 8, col]), float(M[k0 + 9, col]))))
        return out

    for tile in range(-(-n_chunks // ROWS)):
        row0 = tile * ROWS
        smem = np.zeros(ROWS * C * 8)
        for i in range(ROWS):
            for ch in range(C):
                if row0 + i < n_chunks:
                    smem[(i * C + swz(r, i, ch)) * 8 : (i * C + swz(r, i, ch)) * 8 + 8] = X[row0 + i, 8 * ch : 8 * ch + 8]
        for warp in range(8):
            cg, rg = warp % CG, warp // CG
            wrow = rg * 16 * MT
            acc = np.zeros((MT, 4, 32, 4))
            for mi in range(MT):
                for s in range(r // 16):
                    addr = [((wrow + mi * 16 + (l & 15)) * C + swz(r, wrow + mi * 16 + (l & 15), 2 * s + (l >> 4))) * 8
                            for l in range(32)]
                    a_regs = []
                    for T in range(32):
                        regs = [tuple(smem[addr[8 * m + T // 4] + 2 * (T % 4) + t] for t in range(2)) for m in range(4)]
                        a_regs.append(tuple(regs))
                    for nt in range(4):
                        for M in (hi, lo):
                            A, B = mma_fragments_to_matrices(a_regs, b_regs(M, cg, s, nt))
                            Cm = A @ B
                            for lane in range(32):
                                acc[mi, nt, lane] += c_fragment(Cm, lane)
            # y = c_j * acc written to the warp's value buffer (32 rows x 8 chunks of 4 floats, chunk c of
            # row i at c ^ (i & 7)); lane t then reads row t back and encodes it.
            ys = np.full((32, 8, 4), np.nan, dtype=np.float32)
            for mi in range(MT):
                for h in range(2):
                    for lane in range(32):
                        gg, q = lane // 4, lane % 4
                        row = mi * 16 + 8 * h + gg
                        y = torch.tensor([acc[mi, nt, lane, 2 * h + b] for nt in range(4) for b in range(2)],
                                         dtype=torch.float32) * c[32 * cg + 8 * q : 32 * cg + 8 * q + 8]
                        ys[row, (2 * q) ^ (row & 7)] = y[:4].numpy()
                        ys[row, (2 * q + 1) ^ (row & 7)] = y[4:].numpy()
            for t in range(32):
                chunk = row0 + wrow + t
                v = torch.tensor(np.concatenate([ys[t, cc ^ (t & 7)] for cc in range(8)]))
                if chunk >= n_chunks:
                    continue
                words, scs = [], []
                for grp in ([v] if fmt == "mx" else [v[:16], v[16:]]):
                    finite = bool(torch.isfinite(grp).all())
                    if fmt == "mx":
                        e = int(ref.mx_scale_exponent(grp[None], method)[0]) if finite else 0
                        scs.append(e + 127 if finite else 0xFF)
                        qv = grp * ref._pow2(torch.tensor([-e]))[0]
                        words += [pack8(qv[8 * j : 8 * j + 8], qv[8 * j : 8 * j + 8]) if finite else 0 for j in range(4)]
                    else:
                        sc = int(ref.e4m3_encode_sat(((grp.abs().max() / 6.0) * g).reshape(1))[0]) if finite else 0x7F
                        d = ref.e4m3_decode(torch.tensor([sc], dtype=torch.uint8))[0] / g
                        scs.append(sc)
                        words += [pack8(grp[8 * j : 8 * j + 8] / d, grp[8 * j : 8 * j + 8]) if (finite and d > 0) else 0
                                  for j in range(2)]
                off = chunk * (r // 2) + 16 * cg
                codes[off : off + 16] = torch.tensor([(wd >> (8 * b)) & 0xFF for wd in words for b in range(4)],
                                                     dtype=torch.uint8)
                for j, sc in enumerate(scs):
                    flat = chunk * (r // G) + len(scs) * cg + j
                    idx = flat if layout == "linear" else blocked_offset(flat // gpr, flat % gpr, gpr)
                    scales[idx] = sc
    codes = codes.reshape(*x.shape[:-1], K // 2)
    scales = scales.reshape(*x.shape[:-1], gpr) if layout == "linear" else scales.reshape(-(-rows // 128) * 128, -1)
    return codes, scales


@pytest.mark.parametrize("r", [16, 32, 128])
@pytest.mark.parametrize("fmt,method", [("mx", "floor"), ("mx", "quest"), ("nv", None)])
@pytest.mark.parametrize("kind", ["hadamard_like", "needs_lo"])
def test_fast_rotate_quantize_matches_cpu_on_exact_data(r, fmt, method, kind):
    gen = torch.Generator().manual_seed(r + 7)
    rows, K = 5, 256
    x = torch.randint(-6, 7, (rows, K), generator=gen).to(torch.bfloat16)
    x[1, :32] = 0.0
    if kind == "hadamard_like":  # +-c entries: S = +-1, the single-MMA path
        R = (torch.randint(0, 2, (r, r), generator=gen).float() * 2 - 1) * 0.25
    else:  # columns with max 1 and entries m * 2^-12: S = R has 13 significant bits, hi + lo carry it exactly
        R = torch.randint(-4096, 4097, (r, r), generator=gen).float() / 4096
        R[0] = 1.0
    layout = "blocked" if r == 32 else "linear"
    assert_emulation_matches_cpu(emulate_fast_rotate_quantize, x, R, fmt, method, layout)


@pytest.mark.parametrize("method", ["floor", "ceil"])
def test_mx_group_scaled_equals_rounded_products(method):
    """cuda/encode.cuh mx_group_scaled: the group of products RN(c * v) quantized by the reference equals the
    folded arithmetic (amax = RN(c * max|v|), e from it, q = RN(v * (c * 2^-e)), the else branch with two
    roundings outside e in [-100, 100]), on every magnitude from subnormal to near overflow."""
    rng = np.random.default_rng(5)
    for c64 in (2.0**-2.5, 2.0**-3.5, 2.0**-4, 0.3, 2.0**-20, 1.0):
        c = torch.tensor(c64, dtype=torch.float32)
        scales = 2.0 ** rng.integers(-140, 125, size=(4096, 1))
        v = torch.tensor(rng.standard_normal((4096, 32)) * scales, dtype=torch.float32)
        v[::7, 3] = -0.0
        v[::11, 5] = 1e-45
        y = v * c  # float32: one rounding per product, as the unfolded kernel stages it
        codes_ref, scales_ref = ref.quantize_mxfp4(y, method=method)
        amax = (v.abs().amax(dim=-1) * c)
        assert torch.equal(amax, y.abs().amax(dim=-1))
        finite = torch.isfinite(amax)
        e = ref.mx_scale_exponent(torch.where(finite[:, None], y, torch.zeros_like(y)), method)
        inv = ref._pow2(-e)
        fold = (e >= -100) & (e <= 100)
        q = torch.where(fold[:, None], v * (c * inv)[:, None], (v * c) * inv[:, None])
        codes = torch.where(finite[:, None], ref.e2m1_encode(q), torch.zeros_like(ref.e2m1_encode(q)))
        assert torch.equal(ref.pack_codes(codes), codes_ref)
        got_scales = torch.where(finite, e + 127, torch.full_like(e, 255)).to(torch.uint8)
        assert torch.equal(got_scales, scales_ref.view(torch.uint8).reshape(-1))


# ---- Hopper wgmma rotation kernel (csrc/cuda/rotate_quantize_wgmma.cu, csrc/cuda/wgmma.cuh)


def sw128_offset(i: int, k: int, rows: int) -> int:
    """wgmma.cuh: byte offset of 16-bit element (i, k) of a [rows][128] K-major operand."""
    return (k // 64) * rows * 128 + i * 128 + ((((k % 64) // 8) ^ (i % 8)) * 16) + (k % 8) * 2


def wgmma_acc_out_col(n: int) -> int:
    """Output column held by wgmma accumulator column n (B's rows are R's columns in this order)."""
    return 32 * ((n % 8) // 2) + 2 * (n // 8) + n % 2


@pytest.mark.parametrize("rows", [64, 128])
def test_wgmma_operand_layout_is_the_hardware_128b_swizzle(rows):
    # The 128-byte swizzle XORs address bits 4-6 with bits 7-9 inside each 1024-byte aligned block. A
    # descriptor for k-step s starts at the K-half's base + 32 (s % 4) bytes; the tensor core reads element
    # (i, kk) of that step at swizzle(start + 128 i + 2 kk). That must be where the kernel put (i, 16 s + kk).
    def swizzle(addr):
        return addr ^ (((addr >> 7) & 7) << 4)

    seen = set()
    for s in range(8):
        start = (s // 4) * rows * 128 + (s % 4) * 32
        for i in range(rows):
            for kk in range(16):
                off = sw128_offset(i, 16 * s + kk, rows)
                assert off == swizzle(start + 128 * i + 2 * kk)
                seen.add(off)
    assert seen == set(range(0, rows * 256, 2))  # a bijection onto the operand's bytes


def test_wgmma_accumulators_give_each_thread_whole_groups():
    # D = X B^T with B row n = column wgmma_acc_out_col(n) of S; the m64n128 fragment (warp w, lane 4g + q,
    # d[4j + 2h + b] = D[16w + g + 8h, 8j + 2q + b]) read through the kernel's at(h, m, k) =
    # d[16m + 4(k/2) + 2h + k%2] must be Y = X S at row 16w + g + 8h, output column 32q + 8m + k.
    g_ = torch.Generator().manual_seed(0)
    X = torch.randint(-8, 9, (64, 128), generator=g_).double()
    S = torch.randint(-8, 9, (128, 128), generator=g_).double()
    perm = [wgmma_acc_out_col(n) for n in range(128)]
    assert sorted(perm) == list(range(128))
    inverse = [8 * ((c % 32) // 2) + 2 * (c // 32) + c % 2 for c in range(128)]  # the kernel's n(col)
    assert all(perm[inverse[c]] == c for c in range(128))
    B = S[:, perm].t()
    D = X @ B.t()
    Y = X @ S
    for w in range(4):
        for lane in range(32):
            g, q = lane // 4, lane % 4
            d = [0.0] * 64
            for j in range(16):
                for h in range(2):
                    for b in range(2):
                        d[4 * j + 2 * h + b] = D[16 * w + g + 8 * h, 8 * j + 2 * q + b].item()
            for h in range(2):
                got = [d[16 * m + 4 * (k // 2) + 2 * h + k % 2] for m in range(4) for k in range(8)]
                assert got == Y[16 * w + g + 8 * h, 32 * q : 32 * q + 32].tolist()
