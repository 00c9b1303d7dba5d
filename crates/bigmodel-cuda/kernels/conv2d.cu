// 2-D convolution by im2col + cuBLAS GEMM: the data-movement kernels around the GEMMs (common.cuh is
// prepended by the Rust side; the GEMMs themselves are cuBLAS calls made from
// crates/bigmodel-cuda/src/conv2d.rs).
//
// Tensors are contiguous NCHW: input x [N, C, H, W], weight [O, C/groups, KH, KW], output
// [N, O, OH, OW]; L = OH * OW. A chunk of B images (images b0 .. b0 + B - 1) has cols = B * L
// columns; its column matrix is [C * KH * KW, cols] (row r = (c, i, j), column b * L + l), so that
// every product is one GEMM per chunk (groups as the batch of a strided-batched GEMM):
//   - forward: tmp [O, cols] (fp32) = W [O, K] x col; conv_scatter_* then writes
//     out[b0 + b, o, l] = tmp[o, b * L + l] + bias[o] (the bias fused, one rounding to the storage
//     type);
//   - backward: the output gradient gathered to gT [O, cols] (conv_gather_*); weight gradient
//     (fp32 accumulator, summed over chunks) = gT x col^T; input gradient: gcol [C*KH*KW, cols]
//     (fp32) = W^T x gT, folded back onto the input by conv_col2im_*.
// Padding may be asymmetric ('same' with an even kernel): the top / left pads shift the window,
// and the output size (computed on the host from both pads) bounds it; taps outside the image read
// 0 in im2col and are skipped in col2im.
// The host sizes chunks so that every per-chunk index (column matrix, tmp / gT, the chunk's
// input) stays below 2^31: the kernels index with 32-bit integers (64-bit division is emulated
// and would dominate). Nothing uses atomics: col2im gathers, per input pixel, the taps that read
// it, and the bias gradient is a two-pass reduction in a fixed order, so results are
// deterministic. Arithmetic is fp32 for every storage type.

#define CONV_THREADS 256

// Layouts shared with crates/bigmodel-cuda/src/conv2d.rs (repr(C)).
struct ConvGeom {
    u64 x;     // input (im2col) or input gradient (col2im), storage type, whole batch
    u64 col;   // column matrix of the chunk: storage type (im2col) or fp32 (col2im)
    int c;     // input channels (all groups)
    int h, w;
    int oh, ow;
    int b0;    // first image of the chunk
    int nb;    // images in the chunk
    int kh, kw;
    int sh, sw;
    int ph, pw;  // top and left padding
    int dh, dw;
    int pad;
};

// out[b0 + b, o, l] = tmp[o, b * L + l] (+ bias[o]).
struct ConvScatter {
    u64 tmp;   // fp32 [O, cols]
    u64 bias;  // [O] storage type, or 0
    u64 out;   // [N, O, L] storage type
    int o;
    int l;
    int b0;
    int nb;
};

// dst[o, b * L + l] = src[b0 + b, o, l] (the chunk's output gradient as an [O, cols] matrix).
struct ConvGather {
    u64 src;
    u64 dst;
    int o;
    int l;
    int b0;
    int nb;
};

// grad_bias[o] = sum over n, l of grad_out[n, o, l], in two deterministic passes: block
// (o, s) of conv_bias_grad_partial_* sums slice s of channel o's N * L values into
// partial[o * slices + s] (fp32), then conv_bias_grad_final_* adds each channel's slices in order.
struct ConvBiasGrad {
    u64 grad_out;  // [N, O, L]
    u64 partial;   // fp32 [O, slices]
    u64 grad_bias; // [O]
    long long n;
    long long o;
    long long l;
    long long slices;
};

// dst[i] = (storage) src[i] for the fp32 weight-gradient accumulator.
struct ConvCast {
    u64 src;  // fp32
    u64 dst;  // storage type
    long long n;
};

// One thread per (channel, column): the KH * KW rows of that channel, in order (no division in
// the tap loop; stores coalesced along the columns).
template <class D>
__device__ void im2col(const ConvGeom& g) {
    typedef typename D::S S;
    const S* x = reinterpret_cast<const S*>(g.x);
    S* col = reinterpret_cast<S*>(g.col);
    const unsigned L = (unsigned)g.oh * (unsigned)g.ow;
    const unsigned cols = (unsigned)g.nb * L;
    const unsigned total = (unsigned)g.c * cols;
    const unsigned taps = (unsigned)(g.kh * g.kw);
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const unsigned c = idx / cols;
        const unsigned jc = idx - c * cols;
        const unsigned b = jc / L;
        const unsigned l = jc - b * L;
        const int oy = (int)(l / (unsigned)g.ow);
        const int ox = (int)l - oy * g.ow;
        const int y0 = oy * g.sh - g.ph;
        const int x0 = ox * g.sw - g.pw;
        const S* src = x + ((u64)((unsigned)g.b0 + b) * (unsigned)g.c + c) * (u64)((unsigned)g.h * (unsigned)g.w);
        S* dst = col + (c * taps) * cols + jc;
        for (int i = 0; i < g.kh; ++i) {
            const int y = y0 + i * g.dh;
            const bool row_in = y >= 0 && y < g.h;
            for (int j = 0; j < g.kw; ++j) {
                const int xx = x0 + j * g.dw;
                S v = D::from(0.0f);
                if (row_in && xx >= 0 && xx < g.w) v = src[y * g.w + xx];
                *dst = v;
                dst += cols;
            }
        }
    }
}

// One thread per input pixel of the chunk: the sum of the fp32 column entries of every tap that
// read it.
template <class D>
__device__ void col2im(const ConvGeom& g) {
    typedef typename D::S S;
    S* gx = reinterpret_cast<S*>(g.x) + (u64)g.b0 * (unsigned)g.c * (unsigned)g.h * (unsigned)g.w;
    const float* col = reinterpret_cast<const float*>(g.col);
    const unsigned L = (unsigned)g.oh * (unsigned)g.ow;
    const unsigned cols = (unsigned)g.nb * L;
    const unsigned hw = (unsigned)g.h * (unsigned)g.w;
    const unsigned total = (unsigned)g.nb * (unsigned)g.c * hw;
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const unsigned plane = idx / hw;
        const unsigned rem = idx - plane * hw;
        const int y = (int)(rem / (unsigned)g.w);
        const int xx = (int)rem - y * g.w;
        const unsigned b = plane / (unsigned)g.c;
        const unsigned c = plane - b * (unsigned)g.c;
        const float* base = col + (c * (unsigned)(g.kh * g.kw)) * cols + b * L;
        float acc = 0.0f;
        for (int i = 0; i < g.kh; ++i) {
            const int ty = y + g.ph - i * g.dh;
            if (ty < 0) break;  // ty only decreases with i
            const int oy = ty / g.sh;
            if (oy * g.sh != ty || oy >= g.oh) continue;
            for (int j = 0; j < g.kw; ++j) {
                const int tx = xx + g.pw - j * g.dw;
                if (tx < 0) break;
                const int ox = tx / g.sw;
                if (ox * g.sw != tx || ox >= g.ow) continue;
                acc += base[(unsigned)(i * g.kw + j) * cols + (unsigned)(oy * g.ow + ox)];
            }
        }
        gx[idx] = D::from(acc);
    }
}

// One thread per output element of the chunk, in the output's order (coalesced stores).
template <class D>
__device__ void scatter(const ConvScatter& p) {
    typedef typename D::S S;
    const float* tmp = reinterpret_cast<const float*>(p.tmp);
    const S* bias = reinterpret_cast<const S*>(p.bias);
    S* out = reinterpret_cast<S*>(p.out) + (u64)p.b0 * (unsigned)p.o * (unsigned)p.l;
    const unsigned L = (unsigned)p.l;
    const unsigned cols = (unsigned)p.nb * L;
    const unsigned total = (unsigned)p.o * cols;
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const unsigned plane = idx / L;
        const unsigned l = idx - plane * L;
        const unsigned b = plane / (unsigned)p.o;
        const unsigned o = plane - b * (unsigned)p.o;
        float v = tmp[o * cols + b * L + l];
        if (bias != nullptr) v += D::to(bias[o]);
        out[idx] = D::from(v);
    }
}

template <class D>
__device__ void gather(const ConvGather& p) {
    typedef typename D::S S;
    const S* src = reinterpret_cast<const S*>(p.src) + (u64)p.b0 * (unsigned)p.o * (unsigned)p.l;
    S* dst = reinterpret_cast<S*>(p.dst);
    const unsigned L = (unsigned)p.l;
    const unsigned cols = (unsigned)p.nb * L;
    const unsigned total = (unsigned)p.o * cols;
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const unsigned o = idx / cols;
        const unsigned r = idx - o * cols;
        const unsigned b = r / L;
        const unsigned l = r - b * L;
        dst[idx] = src[(b * (unsigned)p.o + o) * L + l];
    }
}

template <class D>
__device__ void bias_grad_partial(const ConvBiasGrad& p) {
    typedef typename D::S S;
    __shared__ float part[CONV_THREADS];
    const S* g = reinterpret_cast<const S*>(p.grad_out);
    float* partial = reinterpret_cast<float*>(p.partial);
    const long long per = p.n * p.l;
    const bool narrow = p.n * p.o * p.l < 0x7fffffffLL;
    for (long long blk = blockIdx.x; blk < p.o * p.slices; blk += gridDim.x) {
        const long long o = blk / p.slices;
        const long long s = blk - o * p.slices;
        const long long lo = per * s / p.slices;
        const long long hi = per * (s + 1) / p.slices;
        float acc = 0.0f;
        if (narrow) {
            const unsigned L = (unsigned)p.l, O = (unsigned)p.o, oo = (unsigned)o;
            for (unsigned k = (unsigned)lo + threadIdx.x; k < (unsigned)hi; k += blockDim.x) {
                const unsigned n = k / L;
                acc += D::to(g[(n * O + oo) * L + (k - n * L)]);
            }
        } else {
            for (long long k = lo + threadIdx.x; k < hi; k += blockDim.x) {
                const long long n = k / p.l;
                acc += D::to(g[(n * p.o + o) * p.l + (k - n * p.l)]);
            }
        }
        part[threadIdx.x] = acc;
        __syncthreads();
        for (int w = CONV_THREADS / 2; w > 0; w >>= 1) {
            if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
            __syncthreads();
        }
        if (threadIdx.x == 0) partial[blk] = part[0];
        __syncthreads();
    }
}

template <class D>
__device__ void bias_grad_final(const ConvBiasGrad& p) {
    typedef typename D::S S;
    const float* partial = reinterpret_cast<const float*>(p.partial);
    S* gb = reinterpret_cast<S*>(p.grad_bias);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < p.o; o += stride) {
        float acc = 0.0f;
        for (long long s = 0; s < p.slices; ++s) acc += partial[o * p.slices + s];
        gb[o] = D::from(acc);
    }
}

template <class D>
__device__ void cast(const ConvCast& p) {
    typedef typename D::S S;
    const float* src = reinterpret_cast<const float*>(p.src);
    S* dst = reinterpret_cast<S*>(p.dst);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < p.n; idx += stride) {
        dst[idx] = D::from(src[idx]);
    }
}

#define CONV_ENTRIES(SUFFIX, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_im2col_##SUFFIX(const ConvGeom g) { \
        im2col<D>(g);                                                                                 \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_col2im_##SUFFIX(const ConvGeom g) { \
        col2im<D>(g);                                                                                 \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                        \
        conv_scatter_##SUFFIX(const ConvScatter p) {                                                  \
        scatter<D>(p);                                                                                \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_gather_##SUFFIX(const ConvGather p) { \
        gather<D>(p);                                                                                 \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                        \
        conv_bias_grad_partial_##SUFFIX(const ConvBiasGrad p) {                                       \
        bias_grad_partial<D>(p);                                                                      \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS)                                        \
        conv_bias_grad_final_##SUFFIX(const ConvBiasGrad p) {                                         \
        bias_grad_final<D>(p);                                                                        \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_cast_##SUFFIX(const ConvCast p) {   \
        cast<D>(p);                                                                                   \
    }

CONV_ENTRIES(f32, F32)
CONV_ENTRIES(bf16, BF16)
CONV_ENTRIES(f16, F16)
