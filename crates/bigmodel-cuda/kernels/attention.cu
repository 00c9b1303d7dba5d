// Scaled dot-product attention, FlashAttention-2 style, forward and backward (common.cuh is
// prepended by the Rust side). Semantics are the CPU kernel's (crates/bigmodel-kernels/src/cpu/
// attention.rs): q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) contiguous, Hq = G * Hkv
// (query head h reads kv head h / G); the scaled score q.k * scale gets a compact 4-D mask (bool:
// non-zero keeps; additive fp32: added) and the top-left causal triangle (key <= query); a row
// that sees no key gives zeros and a log-sum-exp of -inf; dropout keeps a weight when the 24-bit
// splitmix64 hash of (seed, b * Hq + h, query, key) is >= threshold and scales it by 1 / (1 - p),
// bit for bit the CPU kernel's stream, so forward, backward and the CPU op drop the same weights.
// Softmax runs in base 2 (scores times log2(e)); lse is saved in natural log, fp32.
//
// Two implementations:
// - tensor cores (bf16 / fp16, E = Ev in {64, 128}): `attn_fwd_mma_*` gives each warp 32 query
//   rows of a 128-row tile and streams 32-key tiles of K and V through shared memory (cp.async,
//   two stages, one barrier per tile), S = Q K^T and O += P V by mma.sync m16n8k16 with fp32
//   accumulators, fragments read with ldmatrix (V transposed on the fly), P kept in registers
//   (the accumulator layout of S is the A-operand layout of P V). Causal tiles above the diagonal are never loaded.
//   `attn_bwd_mma_*` gives a block 128 keys of one kv head (16 per warp) and loops over the G query
//   heads of the group and their 64-row query tiles: S^T = K Q^T, P^T from the saved lse,
//   dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dK += dS^T Q in registers (written once,
//   no atomics); dQ += dS K goes through shared memory and fp32 atomics into a workspace that
//   `attn_dq_convert_*` turns into the input dtype. Delta = rowsum(dO * O) comes from
//   `attn_delta_*` first.
// - SIMT (any dtype, any head dims up to 256): one warp per query row (forward, dQ) or per key
//   (dK, dV), lanes across the head dimension. Used for fp32 and for shapes the tensor-core path
//   does not take.

#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f
#define ATTN_SIMT_WARPS 4
#define ATTN_MAX_SIMT_DIM 256
#define ATTN_FWD_WARPS 4
#define ATTN_FWD_BQ 128
#define ATTN_FWD_BK 32
#define ATTN_BWD_WARPS 8
#define ATTN_BWD_BQ 64

// Layout shared with crates/bigmodel-cuda/src/attention.rs (repr(C)).
struct AttnParams {
    u64 q;        // (B, Hq, L, E)
    u64 k;        // (B, Hkv, S, E)
    u64 v;        // (B, Hkv, S, Ev)
    u64 out;      // (B, Hq, L, Ev)
    u64 lse;      // (B, Hq, L) fp32
    u64 dout;     // (B, Hq, L, Ev)
    u64 delta;    // (B, Hq, L) fp32 workspace
    u64 dq_acc;   // (B, Hq, L, E) fp32 workspace, zeroed (tensor-core backward)
    u64 dq;       // (B, Hq, L, E)
    u64 dk;       // (B, Hkv, S, E)
    u64 dv;       // (B, Hkv, S, Ev)
    u64 mask;     // u8 (bool) or fp32 (additive), compact 4-D, or 0
    u64 seed;
    long long mask_dims[4];
    int batch, heads_q, heads_kv, len_q, len_kv, dim_qk, dim_v;
    int mask_kind;  // 0 none, 1 bool, 2 additive
    int causal;
    float scale;
    float dropout_p;
    float inv_keep;  // 1 / (1 - dropout_p)
    u32 drop_threshold;
    int pad;
};

// ---- shared pieces -------------------------------------------------------------------------

// Whether the dropout stream keeps weight (query qi, key kj) of head bh = b * Hq + h.
__device__ __forceinline__ bool attn_keep(const AttnParams& p, long long bh, long long qi, long long kj) {
    u64 z = p.seed ^ ((u64)bh * 0x9E3779B97F4A7C15ull +
                      ((u64)qi * (u64)p.len_kv + (u64)kj) * 0xD1B54A32D192ED03ull);
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (u32)(z >> 40) >= p.drop_threshold;
}

// The base-2 logit of (query qi, key kj) from its scaled score x2 = q.k * scale * log2(e):
// -inf outside the tensors, above the causal diagonal or where the mask drops it.
__device__ __forceinline__ float attn_fix(const AttnParams& p, float x2, int b, int h, long long qi,
                                          long long kj) {
    if (qi >= p.len_q || kj >= p.len_kv) return -BM_INF;
    if (p.causal && kj > qi) return -BM_INF;
    if (p.mask_kind != 0) {
        const long long* md = p.mask_dims;
        const long long idx = (((md[0] == 1 ? 0 : (long long)b) * md[1] + (md[1] == 1 ? 0 : h)) * md[2] +
                               (md[2] == 1 ? 0 : qi)) * md[3] +
                              (md[3] == 1 ? 0 : kj);
        if (p.mask_kind == 1) {
            if (reinterpret_cast<const unsigned char*>(p.mask)[idx] == 0) return -BM_INF;
        } else {
            x2 += reinterpret_cast<const float*>(p.mask)[idx] * ATTN_LOG2E;
        }
    }
    return x2;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Delta = rowsum(dO * O) in fp32, one warp per row.
template <class T>
__device__ void attn_delta(const AttnParams& p) {
    typedef typename T::S S;
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * ATTN_SIMT_WARPS + (threadIdx.x >> 5);
    const long long rows = (long long)p.batch * p.heads_q * p.len_q;
    if (row >= rows) return;
    const S* o = reinterpret_cast<const S*>(p.out) + row * p.dim_v;
    const S* g = reinterpret_cast<const S*>(p.dout) + row * p.dim_v;
    float acc = 0.0f;
    for (int d = lane; d < p.dim_v; d += 32) acc += T::to(o[d]) * T::to(g[d]);
    acc = warp_sum(acc);
    if (lane == 0) reinterpret_cast<float*>(p.delta)[row] = acc;
}

// dQ (input dtype) from the fp32 workspace (already scaled).
template <class T>
__device__ void attn_dq_convert(const AttnParams& p) {
    typedef typename T::S S;
    const long long n = (long long)p.batch * p.heads_q * p.len_q * p.dim_qk;
    const float* a = reinterpret_cast<const float*>(p.dq_acc);
    S* d = reinterpret_cast<S*>(p.dq);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        d[i] = T::from(a[i]);
}

// ---- SIMT path -----------------------------------------------------------------------------

#define ATTN_PER_LANE (ATTN_MAX_SIMT_DIM / 32)

template <class T>
__device__ __forceinline__ void load_lanes(const typename T::S* src, int n, int lane, float* r) {
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        r[j] = d < n ? T::to(src[d]) : 0.0f;
    }
}

template <class T>
__device__ __forceinline__ float dot_lanes(const float* r, const typename T::S* src, int n, int lane) {
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        if (d < n) acc += r[j] * T::to(src[d]);
    }
    return warp_sum(acc);
}

// Forward, one warp per (b, h, query row): grid (B * Hq, ceil(L / warps)).
template <class T>
__device__ void attn_fwd_simt(const AttnParams& p) {
    typedef typename T::S S;
    const int lane = threadIdx.x & 31;
    const long long qi = (long long)blockIdx.y * ATTN_SIMT_WARPS + (threadIdx.x >> 5);
    if (qi >= p.len_q) return;
    const long long bh = blockIdx.x;
    const int b = (int)(bh / p.heads_q), h = (int)(bh % p.heads_q);
    const long long bhk = (long long)b * p.heads_kv + h / (p.heads_q / p.heads_kv);
    const int E = p.dim_qk, Ev = p.dim_v;
    const S* k = reinterpret_cast<const S*>(p.k) + bhk * p.len_kv * E;
    const S* v = reinterpret_cast<const S*>(p.v) + bhk * p.len_kv * Ev;
    float q[ATTN_PER_LANE], o[ATTN_PER_LANE];
    load_lanes<T>(reinterpret_cast<const S*>(p.q) + (bh * p.len_q + qi) * E, E, lane, q);
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) o[j] = 0.0f;
    const float scale2 = p.scale * ATTN_LOG2E;
    float m = -BM_INF, l = 0.0f;
    const long long kend = p.causal ? min((long long)p.len_kv, qi + 1) : (long long)p.len_kv;
    for (long long kj = 0; kj < kend; ++kj) {
        const float x = attn_fix(p, dot_lanes<T>(q, k + kj * E, E, lane) * scale2, b, h, qi, kj);
        if (x == -BM_INF) continue;
        const float mn = fmaxf(m, x);
        const float c = exp2f(m - mn);
        float pe = exp2f(x - mn);
        l = l * c + pe;
        if (p.dropout_p > 0.0f) pe = attn_keep(p, bh, qi, kj) ? pe * p.inv_keep : 0.0f;
        const S* vr = v + kj * Ev;
#pragma unroll
        for (int j = 0; j < ATTN_PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < Ev) o[j] = o[j] * c + pe * T::to(vr[d]);
        }
        m = mn;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    S* out = reinterpret_cast<S*>(p.out) + (bh * p.len_q + qi) * Ev;
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        if (d < Ev) out[d] = T::from(o[j] * inv);
    }
    if (lane == 0)
        reinterpret_cast<float*>(p.lse)[bh * p.len_q + qi] = l > 0.0f ? (m + log2f(l)) * ATTN_LN2 : -BM_INF;
}

// The saved lse in base 2, with a row that saw no key mapped to +inf (its weights become 0).
__device__ __forceinline__ float lse2_of(float lse) { return lse == -BM_INF ? BM_INF : lse * ATTN_LOG2E; }

// dQ, one warp per (b, h, query row).
template <class T>
__device__ void attn_bwd_dq_simt(const AttnParams& p) {
    typedef typename T::S S;
    const int lane = threadIdx.x & 31;
    const long long qi = (long long)blockIdx.y * ATTN_SIMT_WARPS + (threadIdx.x >> 5);
    if (qi >= p.len_q) return;
    const long long bh = blockIdx.x;
    const int b = (int)(bh / p.heads_q), h = (int)(bh % p.heads_q);
    const long long bhk = (long long)b * p.heads_kv + h / (p.heads_q / p.heads_kv);
    const int E = p.dim_qk, Ev = p.dim_v;
    const long long row = bh * p.len_q + qi;
    const S* k = reinterpret_cast<const S*>(p.k) + bhk * p.len_kv * E;
    const S* v = reinterpret_cast<const S*>(p.v) + bhk * p.len_kv * Ev;
    float q[ATTN_PER_LANE], g[ATTN_PER_LANE], dq[ATTN_PER_LANE];
    load_lanes<T>(reinterpret_cast<const S*>(p.q) + row * E, E, lane, q);
    load_lanes<T>(reinterpret_cast<const S*>(p.dout) + row * Ev, Ev, lane, g);
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) dq[j] = 0.0f;
    const float lse2 = lse2_of(reinterpret_cast<const float*>(p.lse)[row]);
    const float delta = reinterpret_cast<const float*>(p.delta)[row];
    const float scale2 = p.scale * ATTN_LOG2E;
    const long long kend = p.causal ? min((long long)p.len_kv, qi + 1) : (long long)p.len_kv;
    for (long long kj = 0; kj < kend; ++kj) {
        const float x = attn_fix(p, dot_lanes<T>(q, k + kj * E, E, lane) * scale2, b, h, qi, kj);
        if (x == -BM_INF) continue;
        const float pr = exp2f(x - lse2);
        float dp = dot_lanes<T>(g, v + kj * Ev, Ev, lane);
        if (p.dropout_p > 0.0f) dp = attn_keep(p, bh, qi, kj) ? dp * p.inv_keep : 0.0f;
        const float ds = pr * (dp - delta) * p.scale;
        const S* kr = k + kj * E;
#pragma unroll
        for (int j = 0; j < ATTN_PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < E) dq[j] += ds * T::to(kr[d]);
        }
    }
    S* out = reinterpret_cast<S*>(p.dq) + row * E;
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        if (d < E) out[d] = T::from(dq[j]);
    }
}

// dK and dV, one warp per (b, kv head, key): grid (B * Hkv, ceil(S / warps)); sums over the
// group's query heads and every query row.
template <class T>
__device__ void attn_bwd_dkv_simt(const AttnParams& p) {
    typedef typename T::S S;
    const int lane = threadIdx.x & 31;
    const long long kj = (long long)blockIdx.y * ATTN_SIMT_WARPS + (threadIdx.x >> 5);
    if (kj >= p.len_kv) return;
    const long long bhk = blockIdx.x;
    const int b = (int)(bhk / p.heads_kv), hk = (int)(bhk % p.heads_kv);
    const int G = p.heads_q / p.heads_kv;
    const int E = p.dim_qk, Ev = p.dim_v;
    float kr[ATTN_PER_LANE], vr[ATTN_PER_LANE], dk[ATTN_PER_LANE], dv[ATTN_PER_LANE];
    load_lanes<T>(reinterpret_cast<const S*>(p.k) + (bhk * p.len_kv + kj) * E, E, lane, kr);
    load_lanes<T>(reinterpret_cast<const S*>(p.v) + (bhk * p.len_kv + kj) * Ev, Ev, lane, vr);
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) dk[j] = dv[j] = 0.0f;
    const float scale2 = p.scale * ATTN_LOG2E;
    for (int gi = 0; gi < G; ++gi) {
        const int h = hk * G + gi;
        const long long bh = (long long)b * p.heads_q + h;
        const S* q = reinterpret_cast<const S*>(p.q) + bh * p.len_q * E;
        const S* g = reinterpret_cast<const S*>(p.dout) + bh * p.len_q * Ev;
        const float* lse = reinterpret_cast<const float*>(p.lse) + bh * p.len_q;
        const float* delta = reinterpret_cast<const float*>(p.delta) + bh * p.len_q;
        for (long long qi = p.causal ? kj : 0; qi < p.len_q; ++qi) {
            const float x = attn_fix(p, dot_lanes<T>(kr, q + qi * E, E, lane) * scale2, b, h, qi, kj);
            if (x == -BM_INF) continue;
            const float pr = exp2f(x - lse2_of(lse[qi]));
            float dp = dot_lanes<T>(vr, g + qi * Ev, Ev, lane);
            float pd = pr;
            if (p.dropout_p > 0.0f) {
                const bool keep = attn_keep(p, bh, qi, kj);
                dp = keep ? dp * p.inv_keep : 0.0f;
                pd = keep ? pr * p.inv_keep : 0.0f;
            }
            const float ds = pr * (dp - delta[qi]) * p.scale;
            const S* qr = q + qi * E;
            const S* gr = g + qi * Ev;
#pragma unroll
            for (int j = 0; j < ATTN_PER_LANE; ++j) {
                const int d = lane + 32 * j;
                if (d < E) dk[j] += ds * T::to(qr[d]);
                if (d < Ev) dv[j] += pd * T::to(gr[d]);
            }
        }
    }
    S* dko = reinterpret_cast<S*>(p.dk) + (bhk * p.len_kv + kj) * E;
    S* dvo = reinterpret_cast<S*>(p.dv) + (bhk * p.len_kv + kj) * Ev;
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        if (d < E) dko[d] = T::from(dk[j]);
        if (d < Ev) dvo[d] = T::from(dv[j]);
    }
}

// ---- tensor-core path (sm_80+: mma.sync, ldmatrix, cp.async) -------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16 bytes global -> shared, zero-filled when !pred (nothing is read then).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(pred ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm4(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4t(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// c += a (16x16, row) * b (16x8, col), fp32 accumulators.
template <class T>
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1);
template <>
__device__ __forceinline__ void mma16816<BF16>(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<F16>(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values as one packed register, `lo` in the low half (round to nearest even).
template <class T>
__device__ __forceinline__ u32 pack2(float lo, float hi);
template <>
__device__ __forceinline__ u32 pack2<BF16>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <>
__device__ __forceinline__ u32 pack2<F16>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// ROWS rows of D 16-bit elements, from global row `row0` on (rows >= nrows zero-filled), into
// shared memory with row stride LD; NT threads share the copies.
template <int ROWS, int D, int LD, int NT>
__device__ __forceinline__ void load_rows(u16* dst, const u16* src, long long row0, long long nrows) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int i = 0; i < (ROWS * CH + NT - 1) / NT; ++i) {
        const int c = (int)threadIdx.x + i * NT;
        if ((ROWS * CH) % NT != 0 && c >= ROWS * CH) break;
        const int r = c / CH, cc = c % CH;
        const long long gr = row0 + r;
        const bool ok = gr < nrows;
        cp_async16(dst + r * LD + cc * 8, src + (ok ? gr : 0) * D + cc * 8, ok);
    }
}

template <int D>
struct FwdSmem {
    static constexpr int LD = D + 8;  // padding: ldmatrix rows land in distinct banks
    static constexpr int BYTES = (ATTN_FWD_BQ + 4 * ATTN_FWD_BK) * LD * 2;
};

// 2^x on the special-function unit (inputs <= 0 here; -inf gives 0).
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Forward: a 1-D grid of B * Hq * ceil(L / BQ) blocks, query tiles of one head adjacent (they
// share K and V in L2), 128 threads, FwdSmem<D>::BYTES of dynamic shared memory. Each warp owns
// MT = 2 row tiles of 16 (32 query rows), so every K / V fragment read from shared memory feeds
// two mma. Key tiles of 32 keep the score fragments small enough that nothing spills (64-key
// tiles spilled 200 bytes per thread at 255 registers, measured on an H100).
template <class T, int D>
__device__ void attn_fwd_mma(const AttnParams& p) {
    constexpr int NW = ATTN_FWD_WARPS, BQ = ATTN_FWD_BQ, BK = ATTN_FWD_BK, LD = FwdSmem<D>::LD;
    constexpr int NT = NW * 32, MT = BQ / (16 * NW);
    extern __shared__ __align__(16) unsigned char attn_smem[];
    u16* Qs = reinterpret_cast<u16*>(attn_smem);
    u16* Ks = Qs + BQ * LD;       // two stages
    u16* Vs = Ks + 2 * BK * LD;   // two stages
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3, mi = lane >> 3, r8 = lane & 7;
    const long long L = p.len_q, S = p.len_kv;
    const int n_qt = (int)((L + BQ - 1) / BQ);
    const long long bh = blockIdx.x / n_qt;
    const int t = (int)(blockIdx.x % n_qt);
    const int qt = p.causal ? n_qt - 1 - t : t;  // causal: the long rows first
    const int b = (int)(bh / p.heads_q), h = (int)(bh % p.heads_q);
    const long long bhk = (long long)b * p.heads_kv + h / (p.heads_q / p.heads_kv);
    const long long q0 = (long long)qt * BQ;
    const u16* Qg = reinterpret_cast<const u16*>(p.q) + bh * L * D;
    const u16* Kg = reinterpret_cast<const u16*>(p.k) + bhk * S * D;
    const u16* Vg = reinterpret_cast<const u16*>(p.v) + bhk * S * D;

    int n_kt = (int)((S + BK - 1) / BK);
    if (p.causal) n_kt = (int)min((long long)n_kt, (q0 + BQ - 1) / BK + 1);

    load_rows<BQ, D, LD, NT>(Qs, Qg, q0, L);
    if (n_kt > 0) {
        load_rows<BK, D, LD, NT>(Ks, Kg, 0, S);
        load_rows<BK, D, LD, NT>(Vs, Vg, 0, S);
    }
    cp_async_commit();

    float o[MT][D / 8][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
        m[mt][0] = m[mt][1] = -BM_INF;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    const float scale2 = p.scale * ATTN_LOG2E;
    const int wrow = warp * 16 * MT;  // first row of this warp in the tile
    const bool drop = p.dropout_p > 0.0f;

    for (int j = 0; j < n_kt; ++j) {
        const int st = j & 1;
        cp_async_wait<0>();
        __syncthreads();  // stage st has landed; every warp is done with stage st ^ 1
        if (j + 1 < n_kt) {
            load_rows<BK, D, LD, NT>(Ks + (st ^ 1) * BK * LD, Kg, (long long)(j + 1) * BK, S);
            load_rows<BK, D, LD, NT>(Vs + (st ^ 1) * BK * LD, Vg, (long long)(j + 1) * BK, S);
        }
        cp_async_commit();
        const u16* Kst = Ks + st * BK * LD;
        const u16* Vst = Vs + st * BK * LD;
        float s[MT][BK / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int i = 0; i < BK / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldsm4(qa[mt], Qs + (wrow + mt * 16 + r8 + (mi & 1) * 8) * LD + kk * 16 + (mi >> 1) * 8);
#pragma unroll
            for (int nn = 0; nn < BK / 16; ++nn) {
                u32 bf[4];
                ldsm4(bf, Kst + (nn * 16 + r8 + (mi >> 1) * 8) * LD + kk * 16 + (mi & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<T>(s[mt][2 * nn], qa[mt], bf[0], bf[1]);
                    mma16816<T>(s[mt][2 * nn + 1], qa[mt], bf[2], bf[3]);
                }
            }
        }
        const long long k0 = (long long)j * BK;
        const bool fix = p.mask_kind != 0 || k0 + BK > S || q0 + BQ > L || (p.causal && k0 + BK - 1 > q0 + wrow);
        if (fix) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        s[mt][nt][e] = attn_fix(p, s[mt][nt][e] * scale2, b, h,
                                                q0 + wrow + mt * 16 + g + (e >> 1) * 8,
                                                k0 + nt * 8 + tg * 2 + (e & 1));
        } else {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] *= scale2;
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            float mx0 = -BM_INF, mx1 = -BM_INF;
#pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt) {
                mx0 = fmaxf(mx0, fmaxf(s[mt][nt][0], s[mt][nt][1]));
                mx1 = fmaxf(mx1, fmaxf(s[mt][nt][2], s[mt][nt][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float n0 = fmaxf(m[mt][0], mx0), n1 = fmaxf(m[mt][1], mx1);
            const float z0 = n0 == -BM_INF ? 0.0f : n0, z1 = n1 == -BM_INF ? 0.0f : n1;
            const float c0 = ex2(m[mt][0] - z0), c1 = ex2(m[mt][1] - z1);
            m[mt][0] = n0;
            m[mt][1] = n1;
            float r0 = 0.0f, r1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt) {
                s[mt][nt][0] = ex2(s[mt][nt][0] - z0);
                s[mt][nt][1] = ex2(s[mt][nt][1] - z0);
                s[mt][nt][2] = ex2(s[mt][nt][2] - z1);
                s[mt][nt][3] = ex2(s[mt][nt][3] - z1);
                r0 += s[mt][nt][0] + s[mt][nt][1];
                r1 += s[mt][nt][2] + s[mt][nt][3];
            }
            l[mt][0] = l[mt][0] * c0 + r0;
            l[mt][1] = l[mt][1] * c1 + r1;
            if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {  // a row max moved
#pragma unroll
                for (int i = 0; i < D / 8; ++i) {
                    o[mt][i][0] *= c0;
                    o[mt][i][1] *= c0;
                    o[mt][i][2] *= c1;
                    o[mt][i][3] *= c1;
                }
            }
        }
        if (drop) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        s[mt][nt][e] = attn_keep(p, bh, q0 + wrow + mt * 16 + g + (e >> 1) * 8,
                                                 k0 + nt * 8 + tg * 2 + (e & 1))
                                           ? s[mt][nt][e] * p.inv_keep
                                           : 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            u32 a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dd = 0; dd < D / 16; ++dd) {
                u32 bf[4];
                ldsm4t(bf, Vst + (kk * 16 + r8 + (mi & 1) * 8) * LD + dd * 16 + (mi >> 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<T>(o[mt][2 * dd], a[mt], bf[0], bf[1]);
                    mma16816<T>(o[mt][2 * dd + 1], a[mt], bf[2], bf[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    float* lse = reinterpret_cast<float*>(p.lse) + bh * L;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float l0 = l[mt][0], l1 = l[mt][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        const long long rowA = q0 + wrow + mt * 16 + g, rowB = rowA + 8;
        u32* outA = reinterpret_cast<u32*>(reinterpret_cast<u16*>(p.out) + (bh * L + rowA) * D);
        u32* outB = reinterpret_cast<u32*>(reinterpret_cast<u16*>(p.out) + (bh * L + rowB) * D);
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            if (rowA < L) outA[i * 4 + tg] = pack2<T>(o[mt][i][0] * i0, o[mt][i][1] * i0);
            if (rowB < L) outB[i * 4 + tg] = pack2<T>(o[mt][i][2] * i1, o[mt][i][3] * i1);
        }
        if (tg == 0) {
            if (rowA < L) lse[rowA] = l0 > 0.0f ? (m[mt][0] + log2f(l0)) * ATTN_LN2 : -BM_INF;
            if (rowB < L) lse[rowB] = l1 > 0.0f ? (m[mt][1] + log2f(l1)) * ATTN_LN2 : -BM_INF;
        }
    }
}

// p[0] += a, p[1] += b (p 8-byte aligned): one vector reduction on sm_90, two before.
__device__ __forceinline__ void red_add2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}

template <int D>
struct BwdSmem {
    static constexpr int BK = ATTN_BWD_WARPS * 16;
    static constexpr int BQ = ATTN_BWD_BQ;
    static constexpr int LD = D + 8;
    static constexpr int LDS = BK + 8;  // dS rows (queries) of BK keys
    // K, V; Q and dO in two stages; dS; lse and Delta in two stages.
    static constexpr int BYTES = (2 * BK * LD + 4 * BQ * LD + BQ * LDS) * 2 + 4 * BQ * 4;
};

// Backward (dK, dV, and dQ into the fp32 workspace): a 1-D grid of B * Hkv * ceil(S / 128) blocks
// (key tiles of one head adjacent: they share Q and dO in L2), 256 threads,
// BwdSmem<D>::BYTES of dynamic shared memory. Needs Delta (attn_delta) and a zeroed dq_acc.
template <class T, int D>
__device__ void attn_bwd_mma(const AttnParams& p) {
    constexpr int NW = ATTN_BWD_WARPS, NT = NW * 32;
    constexpr int BK = BwdSmem<D>::BK, BQ = BwdSmem<D>::BQ, LD = BwdSmem<D>::LD, LDS = BwdSmem<D>::LDS;
    constexpr int WPM = NW / (BQ / 16);     // warps per 16-query slice in dQ
    constexpr int DQC = D / WPM;            // dQ columns per warp
    extern __shared__ __align__(16) unsigned char attn_smem[];
    u16* Ks = reinterpret_cast<u16*>(attn_smem);
    u16* Vs = Ks + BK * LD;
    u16* Qs = Vs + BK * LD;         // two stages
    u16* Gs = Qs + 2 * BQ * LD;     // dO, two stages
    u16* dSs = Gs + 2 * BQ * LD;    // (BQ, LDS)
    float* Ls = reinterpret_cast<float*>(dSs + BQ * LDS);  // lse, two stages
    float* Ds = Ls + 2 * BQ;                                // Delta, two stages
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tg = lane & 3, mi = lane >> 3, r8 = lane & 7;
    const long long L = p.len_q, S = p.len_kv;
    const int n_kt = (int)((S + BK - 1) / BK);
    const long long bhk = blockIdx.x / n_kt;
    const long long k0 = (long long)(blockIdx.x % n_kt) * BK;
    const int b = (int)(bhk / p.heads_kv), hk = (int)(bhk % p.heads_kv);
    const int G = p.heads_q / p.heads_kv;
    const u16* Kg = reinterpret_cast<const u16*>(p.k) + bhk * S * D;
    const u16* Vg = reinterpret_cast<const u16*>(p.v) + bhk * S * D;

    const int n_qt = (int)((L + BQ - 1) / BQ);
    const int qt0 = p.causal ? (int)min((long long)n_qt, k0 / BQ) : 0;
    const int per = n_qt - qt0;
    const int total = G * per;

    // Loads of iteration t (head h = hk * G + t / per, query tile qt0 + t % per) into stage st.
    auto load_q = [&](int t, int st) {
        const int h = hk * G + t / per;
        const long long bh = (long long)b * p.heads_q + h;
        const long long q0 = (long long)(qt0 + t % per) * BQ;
        load_rows<BQ, D, LD, NT>(Qs + st * BQ * LD, reinterpret_cast<const u16*>(p.q) + bh * L * D, q0, L);
        load_rows<BQ, D, LD, NT>(Gs + st * BQ * LD, reinterpret_cast<const u16*>(p.dout) + bh * L * D, q0, L);
        if (threadIdx.x < BQ) {
            const long long qi = q0 + threadIdx.x;
            const bool ok = qi < L;
            const long long off = bh * L + (ok ? qi : 0);
            cp_async4(Ls + st * BQ + threadIdx.x, reinterpret_cast<const float*>(p.lse) + off, ok);
            cp_async4(Ds + st * BQ + threadIdx.x, reinterpret_cast<const float*>(p.delta) + off, ok);
        }
    };

    load_rows<BK, D, LD, NT>(Ks, Kg, k0, S);
    load_rows<BK, D, LD, NT>(Vs, Vg, k0, S);
    if (total > 0) load_q(0, 0);
    cp_async_commit();

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.0f;
        dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.0f;
    }
    const float scale2 = p.scale * ATTN_LOG2E;
    const bool drop = p.dropout_p > 0.0f;
    const long long keyA = k0 + warp * 16 + g, keyB = keyA + 8;

    for (int t = 0; t < total; ++t) {
        const int st = t & 1;
        if (t + 1 < total) load_q(t + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int h = hk * G + t / per;
        const long long bh = (long long)b * p.heads_q + h;
        const long long q0 = (long long)(qt0 + t % per) * BQ;
        const u16* Qst = Qs + st * BQ * LD;
        const u16* Gst = Gs + st * BQ * LD;
        const float* Lst = Ls + st * BQ;
        const float* Dst = Ds + st * BQ;

        // S^T = K Q^T and dP^T = V dO^T: 16 keys (this warp's) x BQ queries.
        float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
        for (int i = 0; i < BQ / 8; ++i) {
            s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
            dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 ka[4], va[4];
            ldsm4(ka, Ks + (warp * 16 + r8 + (mi & 1) * 8) * LD + kk * 16 + (mi >> 1) * 8);
            ldsm4(va, Vs + (warp * 16 + r8 + (mi & 1) * 8) * LD + kk * 16 + (mi >> 1) * 8);
#pragma unroll
            for (int nn = 0; nn < BQ / 16; ++nn) {
                u32 bf[4];
                ldsm4(bf, Qst + (nn * 16 + r8 + (mi >> 1) * 8) * LD + kk * 16 + (mi & 1) * 8);
                mma16816<T>(s[2 * nn], ka, bf[0], bf[1]);
                mma16816<T>(s[2 * nn + 1], ka, bf[2], bf[3]);
                ldsm4(bf, Gst + (nn * 16 + r8 + (mi >> 1) * 8) * LD + kk * 16 + (mi & 1) * 8);
                mma16816<T>(dp[2 * nn], va, bf[0], bf[1]);
                mma16816<T>(dp[2 * nn + 1], va, bf[2], bf[3]);
            }
        }
        const bool fix = p.mask_kind != 0 || k0 + BK > S || q0 + BQ > L ||
                         (p.causal && k0 + warp * 16 + 15 > q0);
        // Scores in base 2 (masked where needed), then P^T (in s).
        if (fix) {
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    s[nt][e] = attn_fix(p, s[nt][e] * scale2, b, h, q0 + nt * 8 + tg * 2 + (e & 1),
                                        e < 2 ? keyA : keyB);
        } else {
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] *= scale2;
        }
#pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt) {
            const int c = nt * 8 + tg * 2;
            const float la = lse2_of(Lst[c]), lb = lse2_of(Lst[c + 1]);
            s[nt][0] = ex2(s[nt][0] - la);
            s[nt][1] = ex2(s[nt][1] - lb);
            s[nt][2] = ex2(s[nt][2] - la);
            s[nt][3] = ex2(s[nt][3] - lb);
        }
        // Dropped P^T packed (A operand of dV); dropout also scales dP^T (keep / (1 - p)).
        u32 pa[BQ / 16][4], sa[BQ / 16][4];
        if (drop) {
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt) {
                float pd[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool keep =
                        attn_keep(p, bh, q0 + nt * 8 + tg * 2 + (e & 1), e < 2 ? keyA : keyB);
                    dp[nt][e] = keep ? dp[nt][e] * p.inv_keep : 0.0f;
                    pd[e] = keep ? s[nt][e] * p.inv_keep : 0.0f;
                }
                pa[nt / 2][(nt & 1) * 2 + 0] = pack2<T>(pd[0], pd[1]);
                pa[nt / 2][(nt & 1) * 2 + 1] = pack2<T>(pd[2], pd[3]);
            }
        } else {
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt) {
                pa[nt / 2][(nt & 1) * 2 + 0] = pack2<T>(s[nt][0], s[nt][1]);
                pa[nt / 2][(nt & 1) * 2 + 1] = pack2<T>(s[nt][2], s[nt][3]);
            }
        }
        // dS^T = P^T (dP^T - Delta) * scale, packed (A operand of dK) and to shared memory (dQ).
#pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt) {
            const float da = Dst[nt * 8 + tg * 2], db = Dst[nt * 8 + tg * 2 + 1];
            dp[nt][0] = s[nt][0] * (dp[nt][0] - da) * p.scale;
            dp[nt][1] = s[nt][1] * (dp[nt][1] - db) * p.scale;
            dp[nt][2] = s[nt][2] * (dp[nt][2] - da) * p.scale;
            dp[nt][3] = s[nt][3] * (dp[nt][3] - db) * p.scale;
            sa[nt / 2][(nt & 1) * 2 + 0] = pack2<T>(dp[nt][0], dp[nt][1]);
            sa[nt / 2][(nt & 1) * 2 + 1] = pack2<T>(dp[nt][2], dp[nt][3]);
            // dS (queries x keys) for dQ: transposed scatter of this fragment.
            const int c = nt * 8 + tg * 2;
            const int kr = warp * 16 + g;
            dSs[c * LDS + kr] = (u16)(sa[nt / 2][(nt & 1) * 2] & 0xffffu);
            dSs[(c + 1) * LDS + kr] = (u16)(sa[nt / 2][(nt & 1) * 2] >> 16);
            dSs[c * LDS + kr + 8] = (u16)(sa[nt / 2][(nt & 1) * 2 + 1] & 0xffffu);
            dSs[(c + 1) * LDS + kr + 8] = (u16)(sa[nt / 2][(nt & 1) * 2 + 1] >> 16);
        }
        // dV += P^T dO and dK += dS^T Q (B operands: dO and Q transposed from shared memory).
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
#pragma unroll
            for (int dd = 0; dd < D / 16; ++dd) {
                u32 bf[4];
                ldsm4t(bf, Gst + (kk * 16 + r8 + (mi & 1) * 8) * LD + dd * 16 + (mi >> 1) * 8);
                mma16816<T>(dv[2 * dd], pa[kk], bf[0], bf[1]);
                mma16816<T>(dv[2 * dd + 1], pa[kk], bf[2], bf[3]);
                ldsm4t(bf, Qst + (kk * 16 + r8 + (mi & 1) * 8) * LD + dd * 16 + (mi >> 1) * 8);
                mma16816<T>(dk[2 * dd], sa[kk], bf[0], bf[1]);
                mma16816<T>(dk[2 * dd + 1], sa[kk], bf[2], bf[3]);
            }
        }
        __syncthreads();  // dS complete
        // dQ += dS K: warp takes queries (warp % (BQ/16)) * 16.. and DQC columns, 32 at a time.
        {
            const int qm = (warp % (BQ / 16)) * 16;
            const int cbase = (warp / (BQ / 16)) * DQC;
            float* dqa = reinterpret_cast<float*>(p.dq_acc) + bh * L * D;
            const long long qA = q0 + qm + g, qB = qA + 8;
#pragma unroll
            for (int cc = 0; cc < DQC; cc += 32) {
                float acc[4][4];
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < BK / 16; ++kk) {
                    u32 a[4];
                    ldsm4(a, dSs + (qm + r8 + (mi & 1) * 8) * LDS + kk * 16 + (mi >> 1) * 8);
#pragma unroll
                    for (int dd = 0; dd < 2; ++dd) {
                        u32 bf[4];
                        ldsm4t(bf, Ks + (kk * 16 + r8 + (mi & 1) * 8) * LD + cbase + cc + dd * 16 +
                                       (mi >> 1) * 8);
                        mma16816<T>(acc[2 * dd], a, bf[0], bf[1]);
                        mma16816<T>(acc[2 * dd + 1], a, bf[2], bf[3]);
                    }
                }
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int col = cbase + cc + i * 8 + tg * 2;
                    if (qA < L) red_add2(dqa + qA * D + col, acc[i][0], acc[i][1]);
                    if (qB < L) red_add2(dqa + qB * D + col, acc[i][2], acc[i][3]);
                }
            }
        }
        __syncthreads();  // stage st and dS are free again
    }
    cp_async_wait<0>();

    u16* dkg = reinterpret_cast<u16*>(p.dk) + bhk * S * D;
    u16* dvg = reinterpret_cast<u16*>(p.dv) + bhk * S * D;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        const int col = i * 8 + tg * 2;
        if (keyA < S) {
            *reinterpret_cast<u32*>(dkg + keyA * D + col) = pack2<T>(dk[i][0], dk[i][1]);
            *reinterpret_cast<u32*>(dvg + keyA * D + col) = pack2<T>(dv[i][0], dv[i][1]);
        }
        if (keyB < S) {
            *reinterpret_cast<u32*>(dkg + keyB * D + col) = pack2<T>(dk[i][2], dk[i][3]);
            *reinterpret_cast<u32*>(dvg + keyB * D + col) = pack2<T>(dv[i][2], dv[i][3]);
        }
    }
}

// ---- entry points --------------------------------------------------------------------------

#define ATTN_SIMT_ENTRIES(SUFFIX, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_SIMT_WARPS * 32)                                    \
        attn_fwd_simt_##SUFFIX(const AttnParams p) { attn_fwd_simt<T>(p); }                               \
    extern "C" __global__ void __launch_bounds__(ATTN_SIMT_WARPS * 32)                                    \
        attn_bwd_dq_simt_##SUFFIX(const AttnParams p) { attn_bwd_dq_simt<T>(p); }                         \
    extern "C" __global__ void __launch_bounds__(ATTN_SIMT_WARPS * 32)                                    \
        attn_bwd_dkv_simt_##SUFFIX(const AttnParams p) { attn_bwd_dkv_simt<T>(p); }                       \
    extern "C" __global__ void __launch_bounds__(ATTN_SIMT_WARPS * 32)                                    \
        attn_delta_##SUFFIX(const AttnParams p) { attn_delta<T>(p); }                                     \
    extern "C" __global__ void __launch_bounds__(256) attn_dq_convert_##SUFFIX(const AttnParams p) {      \
        attn_dq_convert<T>(p);                                                                             \
    }

#define ATTN_MMA_ENTRIES(SUFFIX, T, D)                                                                     \
    extern "C" __global__ void __launch_bounds__(ATTN_FWD_WARPS * 32)                                     \
        attn_fwd_mma##D##_##SUFFIX(const AttnParams p) { attn_fwd_mma<T, D>(p); }                          \
    extern "C" __global__ void __launch_bounds__(ATTN_BWD_WARPS * 32, 1)                                  \
        attn_bwd_mma##D##_##SUFFIX(const AttnParams p) { attn_bwd_mma<T, D>(p); }

ATTN_SIMT_ENTRIES(f32, F32)
ATTN_SIMT_ENTRIES(bf16, BF16)
ATTN_SIMT_ENTRIES(f16, F16)
ATTN_MMA_ENTRIES(bf16, BF16, 64)
ATTN_MMA_ENTRIES(bf16, BF16, 128)
ATTN_MMA_ENTRIES(f16, F16, 64)
ATTN_MMA_ENTRIES(f16, F16, 128)
