// Runs the cross-entropy kernels of crates/bigmodel-cuda/kernels/cross_entropy.cu on the CPU, for
// CI without a GPU. Each CUDA thread of a block is an OS thread; __syncthreads is a barrier of the
// block, __shfl_xor_sync an exchange through a per-warp buffer between two warp barriers, and
// __shared__ variables are statics (blocks run one after another). Built by
// tests/gpu/test_cross_entropy_emulated.py with g++ -std=c++20 -pthread.
#include <barrier>
#include <math.h>
#include <memory>
#include <stdint.h>
#include <string.h>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
#define __shared__ static
struct Dim {
    unsigned x;
};
static thread_local Dim threadIdx;
static Dim blockIdx, blockDim, gridDim;
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __expf(float x) { return expf(x); }
struct uint4 { unsigned x, y, z, w; };

static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static float warp_buffer[32][32];

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    warp_buffer[w][l] = v;
    warp_barriers[w]->arrive_and_wait();
    const float r = warp_buffer[w][l ^ lane_mask];
    warp_barriers[w]->arrive_and_wait();
    return r;
}

#include "../../crates/bigmodel-cuda/kernels/common.cuh"
#include "../../crates/bigmodel-cuda/kernels/cross_entropy.cu"

template <class F>
static void run_grid(unsigned grid, F kernel) {
    gridDim.x = grid;
    blockDim.x = CE_THREADS;
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        std::barrier<> bar(CE_THREADS);
        block_barrier = &bar;
        warp_barriers.clear();
        for (unsigned w = 0; w < CE_THREADS / 32; ++w) warp_barriers.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < CE_THREADS; ++t) {
            threads.emplace_back([t, &kernel] {
                threadIdx.x = t;
                kernel();
            });
        }
        for (auto& th : threads) th.join();
    }
}

extern "C" void forward(const CeForward* a, int dtype, unsigned grid) {
    run_grid(grid, [a, dtype] {
        if (dtype == 0) ce_forward_f32(*a);
        if (dtype == 1) ce_forward_bf16(*a);
        if (dtype == 2) ce_forward_f16(*a);
    });
}

extern "C" void reduce(const CeReduce* a, int dtype) {
    run_grid(1, [a, dtype] {
        if (dtype == 0) ce_reduce_f32(*a);
        if (dtype == 1) ce_reduce_bf16(*a);
        if (dtype == 2) ce_reduce_f16(*a);
    });
}

extern "C" void backward(const CeBackward* a, int dtype, unsigned grid) {
    run_grid(grid, [a, dtype] {
        if (dtype == 0) ce_backward_f32(*a);
        if (dtype == 1) ce_backward_bf16(*a);
        if (dtype == 2) ce_backward_f16(*a);
    });
}
