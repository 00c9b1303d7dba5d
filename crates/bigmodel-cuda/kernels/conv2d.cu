// 2-D convolution by im2col + cuBLAS GEMM: the data-movement kernels around the GEMMs (common.cuh is
// prepended by the Rust side; the GEMMs themselves are cuBLAS calls made from
// crates/bigmodel-cuda/src/conv2d.rs).
//
// Tensors are contiguous NCHW: input x [N, C, H, W], weight [O, C/groups, KH, KW], output
// [N, O, OH, OW]; L = OH * OW. The column matrix of a chunk of B images (images b0 .. b0 + B - 1)
// is laid out [C * KH * KW, B * L]: row r = (c, i, j), column b * L + l, so that
//   - the forward is one strided-batched GEMM per group (batch over the chunk's images, column
//     block of image b at offset b * L, leading dimension B * L);
//   - the weight gradient is one GEMM per chunk with k = B * L (groups as the batch), against the
//     output gradient transposed to [O, B * L] by conv_gather_*;
//   - the input gradient's column matrix (fp32, same layout) is folded back by conv_col2im_*.
// Padding may be asymmetric ('same' with an even kernel): the top / left pads shift the window,
// and the output size (computed on the host from both pads) bounds it; taps that fall outside the
// image read 0 in im2col and are skipped in col2im.
// Every thread handles independent elements (grid-stride loops, 64-bit indices), nothing uses
// atomics: col2im gathers, per input pixel, the taps that read it, so results are deterministic.
// Arithmetic is fp32 for every storage type.

#define CONV_THREADS 256

// Layouts shared with crates/bigmodel-cuda/src/conv2d.rs (repr(C)).
struct ConvGeom {
    u64 x;          // input (im2col) or input gradient (col2im), storage type
    u64 col;        // column matrix: storage type (im2col) or fp32 (col2im)
    long long c;    // input channels (all groups)
    long long h, w;
    long long oh, ow;
    long long b0;   // first image of the chunk
    long long nb;   // images in the chunk
    int kh, kw;
    int sh, sw;
    int ph, pw;     // top and left padding
    int dh, dw;
};

// out[n, o, l] = bias[o] for every element (the GEMMs then accumulate onto it with beta = 1, so
// the bias is added in fp32 before the single rounding to the storage type).
struct ConvBias {
    u64 bias;  // [O]
    u64 out;   // [N, O, L]
    long long n;
    long long o;
    long long l;
};

// dst[o, b * L + l] = src[b0 + b, o, l] (the chunk's output gradient as an [O, B * L] matrix).
struct ConvGather {
    u64 src;
    u64 dst;
    long long o;
    long long l;
    long long b0;
    long long nb;
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

template <class D>
__device__ void im2col(const ConvGeom& g) {
    typedef typename D::S S;
    const S* x = reinterpret_cast<const S*>(g.x);
    S* col = reinterpret_cast<S*>(g.col);
    const long long L = g.oh * g.ow;
    const long long cols = g.nb * L;
    const long long total = g.c * g.kh * g.kw * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long row = idx / cols;
        const long long cidx = idx - row * cols;
        const long long b = cidx / L;
        const long long l = cidx - b * L;
        const int j = (int)(row % g.kw);
        const long long rr = row / g.kw;
        const int i = (int)(rr % g.kh);
        const long long c = rr / g.kh;
        const long long oy = l / g.ow;
        const long long ox = l - oy * g.ow;
        const long long y = oy * g.sh - g.ph + (long long)i * g.dh;
        const long long xx = ox * g.sw - g.pw + (long long)j * g.dw;
        S v = D::from(0.0f);
        if (y >= 0 && y < g.h && xx >= 0 && xx < g.w) {
            v = x[(((g.b0 + b) * g.c + c) * g.h + y) * g.w + xx];
        }
        col[idx] = v;
    }
}

template <class D>
__device__ void col2im(const ConvGeom& g) {
    typedef typename D::S S;
    S* gx = reinterpret_cast<S*>(g.x);
    const float* col = reinterpret_cast<const float*>(g.col);
    const long long L = g.oh * g.ow;
    const long long cols = g.nb * L;
    const long long total = g.nb * g.c * g.h * g.w;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long xx = idx % g.w;
        long long t = idx / g.w;
        const long long y = t % g.h;
        t /= g.h;
        const long long c = t % g.c;
        const long long b = t / g.c;
        float acc = 0.0f;
        for (int i = 0; i < g.kh; ++i) {
            const long long ty = y + g.ph - (long long)i * g.dh;
            if (ty < 0 || ty % g.sh != 0) continue;
            const long long oy = ty / g.sh;
            if (oy >= g.oh) continue;
            for (int j = 0; j < g.kw; ++j) {
                const long long tx = xx + g.pw - (long long)j * g.dw;
                if (tx < 0 || tx % g.sw != 0) continue;
                const long long ox = tx / g.sw;
                if (ox >= g.ow) continue;
                const long long row = (c * g.kh + i) * g.kw + j;
                acc += col[row * cols + b * L + oy * g.ow + ox];
            }
        }
        gx[(g.b0 * g.c) * g.h * g.w + idx] = D::from(acc);
    }
}

template <class D>
__device__ void bias_fill(const ConvBias& p) {
    typedef typename D::S S;
    const S* bias = reinterpret_cast<const S*>(p.bias);
    S* out = reinterpret_cast<S*>(p.out);
    const long long total = p.n * p.o * p.l;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        out[idx] = bias[(idx / p.l) % p.o];
    }
}

template <class D>
__device__ void gather(const ConvGather& p) {
    typedef typename D::S S;
    const S* src = reinterpret_cast<const S*>(p.src);
    S* dst = reinterpret_cast<S*>(p.dst);
    const long long cols = p.nb * p.l;
    const long long total = p.o * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long o = idx / cols;
        const long long r = idx - o * cols;
        const long long b = r / p.l;
        const long long l = r - b * p.l;
        dst[idx] = src[((p.b0 + b) * p.o + o) * p.l + l];
    }
}

template <class D>
__device__ void bias_grad_partial(const ConvBiasGrad& p) {
    typedef typename D::S S;
    __shared__ float part[CONV_THREADS];
    const S* g = reinterpret_cast<const S*>(p.grad_out);
    float* partial = reinterpret_cast<float*>(p.partial);
    const long long per = p.n * p.l;
    for (long long blk = blockIdx.x; blk < p.o * p.slices; blk += gridDim.x) {
        const long long o = blk / p.slices;
        const long long s = blk - o * p.slices;
        const long long lo = per * s / p.slices;
        const long long hi = per * (s + 1) / p.slices;
        float acc = 0.0f;
        for (long long k = lo + threadIdx.x; k < hi; k += blockDim.x) {
            const long long n = k / p.l;
            const long long l = k - n * p.l;
            acc += D::to(g[(n * p.o + o) * p.l + l]);
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
    extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_bias_##SUFFIX(const ConvBias p) {   \
        bias_fill<D>(p);                                                                              \
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
