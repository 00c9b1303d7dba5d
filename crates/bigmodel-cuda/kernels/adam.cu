// Fused multi-tensor Adam / AdamW step (common.cuh is prepended by the Rust side).
//
// One launch updates up to ADAM_MAX_TENSORS tensors: every tensor is cut into chunks of ADAM_CHUNK
// elements and block b handles chunk block_chunk[b] of tensor block_tensor[b] (the table apex and
// torch's multi_tensor_apply use). The tensor addresses travel in the kernel parameters (under the
// large kernel-parameter limit of CUDA 12.1+, 32764 bytes), so a launch needs no host-to-device copy and can be captured in a CUDA graph.
//
// Per element, in fp32 whatever the storage type (the CPU kernel's and torch's order of operations):
//   g  = grad / grad_scale            (AMP only; the unscaled grad is written back)
//   g  = -g                           (maximize)
//   g  = g + weight_decay * p         (Adam's L2 penalty)   |  p = p * (1 - lr * weight_decay) (AdamW)
//   m  = m + (1 - beta1) * (g - m)
//   v  = beta2 * v + (1 - beta2) * g * g
//   vm = max(vm, v)                   (amsgrad; the denominator then uses vm)
//   p  = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i^step (in fp64)
//
// Step counters: either on the host (step_kind 0: the Rust side has already incremented them and
// passes the new count in host_step) or on the device (step_kind 1 = float32, 2 = float64): then
// adam_bump_steps increments them on the stream first (skipped when found_inf is set, as torch's
// fused step leaves the counters alone on overflow), and adam_step_* reads the new count. Nothing
// here reads device memory on the host: a whole step can sit in a CUDA graph.

#define ADAM_MAX_TENSORS 192
#define ADAM_MAX_BLOCKS 1536
#define ADAM_CHUNK 65536
#define ADAM_THREADS 512

// Layout shared with crates/bigmodel-cuda/src/adam.rs (`AdamBatch`, repr(C)); a Rust test checks
// these constants against the Rust ones.
struct AdamBatch {
    u64 param[ADAM_MAX_TENSORS];
    u64 grad[ADAM_MAX_TENSORS];
    u64 exp_avg[ADAM_MAX_TENSORS];
    u64 exp_avg_sq[ADAM_MAX_TENSORS];
    u64 max_exp_avg_sq[ADAM_MAX_TENSORS];
    u64 step[ADAM_MAX_TENSORS];
    long long numel[ADAM_MAX_TENSORS];
    double host_step[ADAM_MAX_TENSORS];
    unsigned char step_kind[ADAM_MAX_TENSORS];
    unsigned char bump[ADAM_MAX_TENSORS];
    u16 block_tensor[ADAM_MAX_BLOCKS];
    u32 block_chunk[ADAM_MAX_BLOCKS];
};

// Layout shared with `AdamHyper` in adam.rs.
struct AdamHyper {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    u64 grad_scale;  // float32 scalar on the device, or 0
    u64 found_inf;   // float32 scalar on the device, or 0
    int amsgrad;
    int maximize;
    int decoupled;
    int n_tensors;
};

__device__ __forceinline__ bool overflowed(u64 found_inf) {
    return found_inf != 0 && *reinterpret_cast<const float*>(found_inf) == 1.0f;
}

extern "C" __global__ void adam_bump_steps(const AdamBatch b, const AdamHyper h) {
    const int i = threadIdx.x;
    if (i >= h.n_tensors || !b.bump[i] || overflowed(h.found_inf)) return;
    if (b.step_kind[i] == 1) {
        *reinterpret_cast<float*>(b.step[i]) += 1.0f;
    } else if (b.step_kind[i] == 2) {
        *reinterpret_cast<double*>(b.step[i]) += 1.0;
    }
}

struct AdamScalars {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, wd, decay, neg_step_size, bc2_sqrt, sign,
        scale;
    bool amsgrad, decoupled, unscale;
};

__device__ __forceinline__ void adam_element(const AdamScalars& s, float& p, float& g, float& m, float& v,
                                             float& vm) {
    if (s.unscale) g = g / s.scale;
    float gg = s.sign * g;
    if (s.wd != 0.0f) {
        if (s.decoupled) {
            p = p * s.decay;
        } else {
            gg = gg + s.wd * p;
        }
    }
    m = m + s.one_minus_beta1 * (gg - m);
    v = s.beta2 * v + s.one_minus_beta2 * gg * gg;
    float second = v;
    if (s.amsgrad) {
        vm = fmaxf(vm, v);
        second = vm;
    }
    p = p + s.neg_step_size * m / (sqrtf(second) / s.bc2_sqrt + s.eps);
}

template <class D>
__device__ void adam_step_body(const AdamBatch& b, const AdamHyper& h) {
    typedef typename D::S S;
    if (overflowed(h.found_inf)) return;
    const int t = b.block_tensor[blockIdx.x];
    const long long start = (long long)b.block_chunk[blockIdx.x] * ADAM_CHUNK;
    const long long left = b.numel[t] - start;
    const long long n = left < ADAM_CHUNK ? left : ADAM_CHUNK;
    if (n <= 0) return;

    double step = b.host_step[t];
    if (b.step_kind[t] == 1) step = (double)*reinterpret_cast<const float*>(b.step[t]);
    if (b.step_kind[t] == 2) step = *reinterpret_cast<const double*>(b.step[t]);
    AdamScalars s;
    s.beta1 = (float)h.beta1;
    s.beta2 = (float)h.beta2;
    s.one_minus_beta1 = (float)(1.0 - h.beta1);
    s.one_minus_beta2 = (float)(1.0 - h.beta2);
    s.eps = (float)h.eps;
    s.wd = (float)h.weight_decay;
    s.decay = (float)(1.0 - h.lr * h.weight_decay);
    s.neg_step_size = (float)(-(h.lr / (1.0 - pow(h.beta1, step))));
    s.bc2_sqrt = (float)sqrt(1.0 - pow(h.beta2, step));
    s.sign = h.maximize ? -1.0f : 1.0f;
    s.amsgrad = h.amsgrad != 0;
    s.decoupled = h.decoupled != 0;
    s.unscale = h.grad_scale != 0;
    s.scale = s.unscale ? *reinterpret_cast<const float*>(h.grad_scale) : 1.0f;

    S* p = reinterpret_cast<S*>(b.param[t]) + start;
    S* g = reinterpret_cast<S*>(b.grad[t]) + start;
    S* m = reinterpret_cast<S*>(b.exp_avg[t]) + start;
    S* v = reinterpret_cast<S*>(b.exp_avg_sq[t]) + start;
    S* vm = s.amsgrad ? reinterpret_cast<S*>(b.max_exp_avg_sq[t]) + start : nullptr;

    constexpr int V = Vec<D>::N;
    const bool vec = aligned_to(p, 16) && aligned_to(g, 16) && aligned_to(m, 16) && aligned_to(v, 16) &&
                     (!s.amsgrad || aligned_to(vm, 16));
    long long done = 0;
    if (vec) {
        const long long nv = n / V;
        for (long long q = threadIdx.x; q < nv; q += blockDim.x) {
            const long long i = q * V;
            float rp[V], rg[V], rm[V], rv[V], rvm[V];
            loadv<D>(p + i, rp);
            loadv<D>(g + i, rg);
            loadv<D>(m + i, rm);
            loadv<D>(v + i, rv);
            if (s.amsgrad) {
                loadv<D>(vm + i, rvm);
            } else {
#pragma unroll
                for (int k = 0; k < V; ++k) rvm[k] = 0.0f;
            }
#pragma unroll
            for (int k = 0; k < V; ++k) adam_element(s, rp[k], rg[k], rm[k], rv[k], rvm[k]);
            storev<D>(p + i, rp);
            if (s.unscale) storev<D>(g + i, rg);
            storev<D>(m + i, rm);
            storev<D>(v + i, rv);
            if (s.amsgrad) storev<D>(vm + i, rvm);
        }
        done = nv * V;
    }
    for (long long i = done + threadIdx.x; i < n; i += blockDim.x) {
        float rp = D::to(p[i]), rg = D::to(g[i]), rm = D::to(m[i]), rv = D::to(v[i]);
        float rvm = s.amsgrad ? D::to(vm[i]) : 0.0f;
        adam_element(s, rp, rg, rm, rv, rvm);
        p[i] = D::from(rp);
        if (s.unscale) g[i] = D::from(rg);
        m[i] = D::from(rm);
        v[i] = D::from(rv);
        if (s.amsgrad) vm[i] = D::from(rvm);
    }
}

extern "C" __global__ void __launch_bounds__(ADAM_THREADS) adam_step_f32(const AdamBatch b, const AdamHyper h) {
    adam_step_body<F32>(b, h);
}
extern "C" __global__ void __launch_bounds__(ADAM_THREADS) adam_step_bf16(const AdamBatch b, const AdamHyper h) {
    adam_step_body<BF16>(b, h);
}
extern "C" __global__ void __launch_bounds__(ADAM_THREADS) adam_step_f16(const AdamBatch b, const AdamHyper h) {
    adam_step_body<F16>(b, h);
}
