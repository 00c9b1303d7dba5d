// Shared by every kernel source (prepended by the Rust side before NVRTC compiles a source, so no
// include path is needed): element types and their conversions, written with integer bit tricks and
// one PTX instruction so that no CUDA header (cuda_fp16.h / cuda_bf16.h) has to be found by NVRTC.
// All arithmetic is fp32; bf16 / fp16 are storage formats only.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define BM_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Round to nearest even, NaN kept quiet (what torch's c10::BFloat16 conversion does).
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

#ifdef __CUDA_ARCH__
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
// Host build of the sources (tests/gpu/adam_emulation.cpp runs the Adam kernels on the CPU).
inline float f16_to_f32(u16 h) {
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}
inline u16 f32_to_f16(float f) {
    _Float16 v = (_Float16)f;
    u16 h;
    memcpy(&h, &v, 2);
    return h;
}
#endif

// Element type tags: S is the storage type, to()/from() convert to and from fp32.
struct F32 {
    typedef float S;
    static __device__ __forceinline__ float to(S v) { return v; }
    static __device__ __forceinline__ S from(float v) { return v; }
};
struct BF16 {
    typedef u16 S;
    static __device__ __forceinline__ float to(S v) { return bf16_to_f32(v); }
    static __device__ __forceinline__ S from(float v) { return f32_to_bf16(v); }
};
struct F16 {
    typedef u16 S;
    static __device__ __forceinline__ float to(S v) { return f16_to_f32(v); }
    static __device__ __forceinline__ S from(float v) { return f32_to_f16(v); }
};

// One 16-byte access: VEC<D> consecutive elements (4 fp32 or 8 bf16 / fp16), converted to or from
// fp32. The caller checks the 16-byte alignment. 16-byte accesses keep the most bytes in flight
// per thread, which is what a bandwidth-bound kernel needs.
template <class D>
struct Vec {
    static constexpr int N = 16 / sizeof(typename D::S);
};

template <class D>
__device__ __forceinline__ void loadv(const typename D::S* p, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    if constexpr (sizeof(typename D::S) == 4) {
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = __uint_as_float(w[k]);
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            out[2 * k] = D::to((u16)(w[k] & 0xffffu));
            out[2 * k + 1] = D::to((u16)(w[k] >> 16));
        }
    }
}

template <class D>
__device__ __forceinline__ void storev(typename D::S* p, const float* in) {
    u32 w[4];
    if constexpr (sizeof(typename D::S) == 4) {
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = __float_as_uint(in[k]);
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (u32)D::from(in[2 * k]) | ((u32)D::from(in[2 * k + 1]) << 16);
    }
    uint4 v;
    v.x = w[0];
    v.y = w[1];
    v.z = w[2];
    v.w = w[3];
    *reinterpret_cast<uint4*>(p) = v;
}

__device__ __forceinline__ bool aligned_to(const void* p, u64 bytes) {
    return ((u64)p % bytes) == 0;
}
