// Runs the Adam kernels of crates/bigmodel-cuda/kernels/adam.cu on the CPU, for CI without a GPU.
// Those kernels use no shared memory, shuffles or barriers, so running every thread of every
// block one after the other is one valid schedule of the real launch. Built by
// tests/gpu/test_adam_emulated.py with g++ -std=c++17; the CUDA built-ins the sources use are
// defined below as plain C++.
#include <math.h>
#include <stdint.h>
#include <string.h>

#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
struct Dim {
    unsigned x;
};
static Dim threadIdx, blockIdx, blockDim;
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
struct uint4 { unsigned x, y, z, w; };

#include "../../crates/bigmodel-cuda/kernels/common.cuh"
#include "../../crates/bigmodel-cuda/kernels/adam.cu"

// One launch as the Rust side queues it: the bump kernel (one block of 32), then the update.
extern "C" void launch(const AdamBatch* b, const AdamHyper* h, int n_blocks, int dtype) {
    blockIdx.x = 0;
    blockDim.x = ADAM_MAX_TENSORS;
    for (unsigned t = 0; t < ADAM_MAX_TENSORS; ++t) {
        threadIdx.x = t;
        adam_bump_steps(*b, *h);
    }
    blockDim.x = ADAM_THREADS;
    for (int k = 0; k < n_blocks; ++k) {
        blockIdx.x = k;
        for (unsigned t = 0; t < ADAM_THREADS; ++t) {
            threadIdx.x = t;
            if (dtype == 0) adam_step_f32(*b, *h);
            if (dtype == 1) adam_step_bf16(*b, *h);
            if (dtype == 2) adam_step_f16(*b, *h);
        }
    }
}

extern "C" unsigned long long batch_size() { return sizeof(AdamBatch); }
