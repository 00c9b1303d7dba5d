// Softmax cross-entropy with class-index targets, forward and backward (common.cuh is prepended by
// the Rust side).
//
// One block per row (grid-stride over rows), fp32 math whatever the storage type.
// Forward reads each row once: every thread keeps an online log-sum-exp (running max m and
// sum s of exp(x - m), rescaled when the max grows, once per 16-byte load of 4 or 8 elements)
// plus, for label smoothing, the sum of (weighted) logits; the block then merges the partial states. Per row, with
// lse = log sum_c exp(x_c), w_c the class weight (1 without weights), W = sum_c w_c, eps the
// label smoothing and C the number of classes (torch's formula, LossNLL.cpp):
//   loss_r = (1 - eps) * w_t * (lse - x_t) + eps / C * (W * lse - sum_c w_c x_c)
// Rows whose target is ignore_index give 0 and weigh 0. 'none' writes loss_r in the input dtype;
// 'mean' / 'sum' write loss_r and w_t to fp32 work arrays that ce_reduce_* sums in a fixed order
// (deterministic) in one block: mean = sum loss_r / sum w_t (NaN when every row is ignored, as in
// torch), and the denominator is stored as total_weight for the backward.
// Backward needs lse only (saved by the forward): one read and one write per element,
//   dx_c = g_r * ((1 - eps) * w_t * (p_c - [c == t]) + eps / C * (W * p_c - w_c)),  p_c = exp(x_c - lse)
// with g_r the incoming gradient (per row for 'none', divided by total_weight for 'mean'). Each
// element is read and written by the same thread, so grad_in may alias logits (in-place gradient).
// A target outside [0, C) that is not ignore_index is never used as an index: the row's loss is NaN
// and error_flag (when given) is set to 1 (torch raises a device-side assert there).

#define CE_THREADS 512

// The bulk exponentials use the hardware approximation (ex2.approx, a few ulp): at 128K classes
// the accurate expf's instruction count rivals the memory time on an H100, and every exp here is
// of a value <= 0 whose result is summed or multiplied by an fp32 / bf16 gradient.
#define CE_EXP(x) __expf(x)

// Layouts shared with crates/bigmodel-cuda/src/cross_entropy.rs (repr(C)).
struct CeForward {
    u64 logits;      // [n_rows, n_classes], contiguous
    u64 target;      // [n_rows] int64
    u64 weight;      // [n_classes] same dtype as logits, or 0
    u64 lse;         // [n_rows] fp32 out
    u64 row_loss;    // [n_rows] fp32 out (mean / sum), or 0
    u64 row_weight;  // [n_rows] fp32 out (mean / sum), or 0
    u64 loss_none;   // [n_rows] input dtype out ('none'), or 0
    u64 error_flag;  // int32 scalar, or 0
    long long n_rows;
    long long n_classes;
    long long ignore_index;
    float label_smoothing;
    int pad;
};

struct CeReduce {
    u64 row_loss;
    u64 row_weight;
    u64 out;           // scalar, input dtype
    u64 total_weight;  // fp32 scalar
    long long n_rows;
    int mean;
    int pad;
};

struct CeBackward {
    u64 logits;
    u64 target;
    u64 weight;
    u64 lse;
    u64 grad_out;      // input dtype: [n_rows] ('none') or a scalar
    u64 total_weight;  // fp32 scalar ('mean'), or 0
    u64 grad_in;       // [n_rows, n_classes] out; may equal logits
    long long n_rows;
    long long n_classes;
    long long ignore_index;
    float label_smoothing;
    int grad_out_per_row;
};

__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -BM_INF) return;  // both empty so far
    s = (m == -BM_INF ? 0.0f : s * CE_EXP(m - mx)) + (m2 == -BM_INF ? 0.0f : s2 * CE_EXP(m2 - mx));
    m = mx;
}

// Block-wide merge of (m, s) and two plain sums; the result is valid in every thread.
__device__ void block_reduce(float& m, float& s, float& a, float& b) {
    __shared__ float sm[32], ss[32], sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // the arrays may still be read from the previous row
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
        sa[warp] = a;
        sb[warp] = b;
    }
    __syncthreads();
    m = -BM_INF;
    s = 0.0f;
    a = 0.0f;
    b = 0.0f;
    for (int w = 0; w < warps; ++w) {  // same order in every thread: identical results
        lse_merge(m, s, sm[w], ss[w]);
        a += sa[w];
        b += sb[w];
    }
}

template <class D>
__device__ void ce_forward_body(const CeForward& a) {
    typedef typename D::S S;
    const long long C = a.n_classes;
    const S* weight = reinterpret_cast<const S*>(a.weight);
    const bool smoothing = a.label_smoothing > 0.0f;
    for (long long r = blockIdx.x; r < a.n_rows; r += gridDim.x) {
        const S* x = reinterpret_cast<const S*>(a.logits) + r * C;
        float m = -BM_INF, s = 0.0f, sum_x = 0.0f, sum_w = 0.0f;
        long long done = 0;
        constexpr int V = Vec<D>::N;
        if (aligned_to(x, 16)) {
            const long long nv = C / V;
            for (long long q = threadIdx.x; q < nv; q += blockDim.x) {
                float v[V];
                loadv<D>(x + q * V, v);
                float lm = v[0];
#pragma unroll
                for (int k = 1; k < V; ++k) lm = fmaxf(lm, v[k]);
                if (lm > m) {
                    s = (m == -BM_INF) ? 0.0f : s * CE_EXP(m - lm);
                    m = lm;
                }
                if (m != -BM_INF) {
#pragma unroll
                    for (int k = 0; k < V; ++k) s += CE_EXP(v[k] - m);
                }
                if (smoothing) {
                    for (int k = 0; k < V; ++k) {
                        const float w = weight ? D::to(weight[q * V + k]) : 1.0f;
                        sum_x += w * v[k];
                        sum_w += w;
                    }
                }
            }
            done = nv * V;
        }
        for (long long c = done + threadIdx.x; c < C; c += blockDim.x) {
            const float v = D::to(x[c]);
            lse_merge(m, s, v, 1.0f);
            if (smoothing) {
                const float w = weight ? D::to(weight[c]) : 1.0f;
                sum_x += w * v;
                sum_w += w;
            }
        }
        block_reduce(m, s, sum_x, sum_w);
        if (threadIdx.x == 0) {
            const float lse = m + logf(s);
            const long long t = reinterpret_cast<const long long*>(a.target)[r];
            float loss = 0.0f, wt = 0.0f;
            if (t != a.ignore_index) {
                if (t < 0 || t >= C) {
                    loss = __int_as_float(0x7fc00000);  // NaN
                    if (a.error_flag) *reinterpret_cast<int*>(a.error_flag) = 1;
                } else {
                    wt = weight ? D::to(weight[t]) : 1.0f;
                    const float eps = a.label_smoothing;
                    loss = (1.0f - eps) * wt * (lse - D::to(x[t]));
                    if (smoothing) loss += eps / (float)C * (sum_w * lse - sum_x);
                }
            }
            reinterpret_cast<float*>(a.lse)[r] = lse;
            if (a.loss_none) reinterpret_cast<S*>(a.loss_none)[r] = D::from(loss);
            if (a.row_loss) reinterpret_cast<float*>(a.row_loss)[r] = loss;
            if (a.row_weight) reinterpret_cast<float*>(a.row_weight)[r] = wt;
        }
    }
}

template <class D>
__device__ void ce_reduce_body(const CeReduce& a) {
    __shared__ double sl[CE_THREADS], sw[CE_THREADS];
    double l = 0.0, w = 0.0;
    const float* rl = reinterpret_cast<const float*>(a.row_loss);
    const float* rw = reinterpret_cast<const float*>(a.row_weight);
    for (long long r = threadIdx.x; r < a.n_rows; r += blockDim.x) {
        l += rl[r];
        w += rw[r];
    }
    sl[threadIdx.x] = l;
    sw[threadIdx.x] = w;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) {
            sl[threadIdx.x] += sl[threadIdx.x + half];
            sw[threadIdx.x] += sw[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float total = (float)sw[0];
        const float out = a.mean ? (float)sl[0] / total : (float)sl[0];
        *reinterpret_cast<typename D::S*>(a.out) = D::from(out);
        if (a.total_weight) *reinterpret_cast<float*>(a.total_weight) = total;
    }
}

template <class D>
__device__ void ce_backward_body(const CeBackward& a) {
    typedef typename D::S S;
    const long long C = a.n_classes;
    const S* weight = reinterpret_cast<const S*>(a.weight);
    const float eps = a.label_smoothing;
    for (long long r = blockIdx.x; r < a.n_rows; r += gridDim.x) {
        const S* x = reinterpret_cast<const S*>(a.logits) + r * C;
        S* dx = reinterpret_cast<S*>(a.grad_in) + r * C;
        const long long t = reinterpret_cast<const long long*>(a.target)[r];
        const bool valid = t != a.ignore_index && t >= 0 && t < C;
        // W = sum of the class weights, needed with weights and label smoothing only.
        float W = (float)C;
        if (valid && weight && eps > 0.0f) {
            float m = -BM_INF, s = 0.0f, acc = 0.0f, unused = 0.0f;
            for (long long c = threadIdx.x; c < C; c += blockDim.x) acc += D::to(weight[c]);
            block_reduce(m, s, acc, unused);
            W = acc;
        }
        float g = 0.0f, wt = 0.0f;
        if (valid) {
            const S* go = reinterpret_cast<const S*>(a.grad_out);
            g = D::to(a.grad_out_per_row ? go[r] : go[0]);
            if (a.total_weight) g = g / *reinterpret_cast<const float*>(a.total_weight);
            wt = weight ? D::to(weight[t]) : 1.0f;
        }
        const float coef_p = g * ((1.0f - eps) * wt + eps / (float)C * W);
        const float coef_t = g * (1.0f - eps) * wt;
        const float coef_w = g * eps / (float)C;
        const float lse = reinterpret_cast<const float*>(a.lse)[r];
        long long done = 0;
        constexpr int V = Vec<D>::N;
        if (aligned_to(x, 16) && aligned_to(dx, 16)) {
            const long long nv = C / V;
            for (long long q = threadIdx.x; q < nv; q += blockDim.x) {
                float v[V];
                loadv<D>(x + q * V, v);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    const long long c = q * V + k;
                    const float w = weight ? D::to(weight[c]) : 1.0f;
                    v[k] = valid ? coef_p * CE_EXP(v[k] - lse) - coef_w * w - (c == t ? coef_t : 0.0f) : 0.0f;
                }
                storev<D>(dx + q * V, v);
            }
            done = nv * V;
        }
        for (long long c = done + threadIdx.x; c < C; c += blockDim.x) {
            const float w = weight ? D::to(weight[c]) : 1.0f;
            const float v = D::to(x[c]);
            dx[c] = D::from(valid ? coef_p * CE_EXP(v - lse) - coef_w * w - (c == t ? coef_t : 0.0f) : 0.0f);
        }
    }
}

#define CE_ENTRY(SUFFIX, TAG)                                                                          \
    extern "C" __global__ void __launch_bounds__(CE_THREADS) ce_forward_##SUFFIX(const CeForward a) {  \
        ce_forward_body<TAG>(a);                                                                       \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(CE_THREADS) ce_reduce_##SUFFIX(const CeReduce a) {    \
        ce_reduce_body<TAG>(a);                                                                        \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(CE_THREADS) ce_backward_##SUFFIX(const CeBackward a) { \
        ce_backward_body<TAG>(a);                                                                      \
    }

CE_ENTRY(f32, F32)
CE_ENTRY(bf16, BF16)
CE_ENTRY(f16, F16)
