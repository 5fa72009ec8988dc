// cp_eager's fused CPU forward of the uvu CP edge product, float32 (see cp_eager.py).
//
//   out[e, k, c] = w[e, c] * sum_r C[k, r] v[e, r] sum_i A[i, r] x[e, i, c]
//
// Per edge and block of channels, u = diag(v_e) A^T x_e ([R, block], stays in L1/L2)
// and then C u, both as register-blocked loops of broadcast FMAs over vectors.
// MKL runs these per-edge [16 x 63] x [63 x 64] products one small GEMM call at a
// time, on one core, at about half the machine's matmul rate; fused, nothing leaves
// the cache between the two products and edges split over threads.
//
// Plain C ABI (loaded with ctypes, which releases the GIL); channels % LANES == 0
// (_cp_cpu_kernel.py asks for a multiple of 16, every build's LANES). Built with -O3
// -march=native by _cp_cpu_kernel.py, in GCC's vector extension, which maps onto
// AVX-512, AVX2 or NEON registers.

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

// One vector register of floats (LANES of them), and the register block: ROWS x
// MAX_VECS accumulators plus MAX_VECS operands and a broadcast, within the register file
// (AVX-512 and NEON: 32 registers, AVX2: 16). Channels per block: MAX_VECS * LANES.
#if defined(__AVX512F__)
constexpr int LANES = 16, ROWS = 4;
#elif defined(__AVX__)
constexpr int LANES = 8, ROWS = 2;
#else
constexpr int LANES = 4, ROWS = 4;
#endif
constexpr int MAX_VECS = 4;
typedef float vec __attribute__((vector_size(4 * LANES)));
typedef float unaligned_vec __attribute__((vector_size(4 * LANES), aligned(4)));

// Pins a vector to a register (see block()).
#if defined(__x86_64__)
#define TDN_IN_REGISTER(v) asm("" : "+v"(v))
#elif defined(__aarch64__)
#define TDN_IN_REGISTER(v) asm("" : "+w"(v))
#else
#define TDN_IN_REGISTER(v) (void)(v)
#endif

inline vec load(const float* p) { return *reinterpret_cast<const unaligned_vec*>(p); }

inline void store(float* p, vec v) { *reinterpret_cast<unaligned_vec*>(p) = v; }

// s - 0 is s even for s = -0, so this folds to one broadcast (vec{} + s does not:
// -0 + 0 = +0, a scalar add is kept before the broadcast)
inline vec splat(float s) { return s - vec{}; }

// acc[rows][vecs] = sum_t lhs(row, t) * rhs[t][vecs], the [rows, n] x [n, vecs * LANES]
// block of a product: lhs(row, t) = lhs[row * row_stride + t * t_stride], rhs row t at
// rhs + t * rhs_stride. The result goes to dst[row * dst_stride + ...], times scale.
template <int NR, int NV>
inline void block(const float* lhs, int64_t row_stride, int64_t t_stride, int64_t n,
                  const float* rhs, int64_t rhs_stride, float* dst, int64_t dst_stride,
                  const float* row_scale, const float* lane_scale) {
  vec acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = vec{};
  for (int64_t t = 0; t < n; ++t) {
    vec b[NV];
    for (int j = 0; j < NV; ++j) {
      b[j] = load(rhs + t * rhs_stride + j * LANES);
      // held in a register: GCC would fold the load into each of the NR FMAs instead,
      // NR times the loads, which then bound the loop
      TDN_IN_REGISTER(b[j]);
    }
    for (int r = 0; r < NR; ++r) {
      const vec a = splat(lhs[r * row_stride + t * t_stride]);
      for (int j = 0; j < NV; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NV; ++j) {
      vec o = acc[r][j];
      if (row_scale) o *= splat(row_scale[r]);
      if (lane_scale) o *= load(lane_scale + j * LANES);
      store(dst + r * dst_stride + j * LANES, o);
    }
}

template <int NV>
inline void rows(int64_t nrows, const float* lhs, int64_t row_stride, int64_t t_stride,
                 int64_t n, const float* rhs, int64_t rhs_stride, float* dst,
                 int64_t dst_stride, const float* row_scale, const float* lane_scale) {
  int64_t r = 0;
  for (; r + ROWS <= nrows; r += ROWS)
    block<ROWS, NV>(lhs + r * row_stride, row_stride, t_stride, n, rhs, rhs_stride,
                    dst + r * dst_stride, dst_stride, row_scale ? row_scale + r : nullptr,
                    lane_scale);
  for (; r < nrows; ++r)
    block<1, NV>(lhs + r * row_stride, row_stride, t_stride, n, rhs, rhs_stride,
                 dst + r * dst_stride, dst_stride, row_scale ? row_scale + r : nullptr,
                 lane_scale);
}

struct Problem {
  const float *x, *v, *w, *A, *C;
  float* out;
  int64_t d1, rank, d3, channels;
};

// One channel block of one edge: u = diag(v_e) A^T x_e, then out_e = (C u) * w_e.
template <int NV>
void edge_block(const Problem& p, int64_t e, int64_t c0, float* u) {
  const int64_t ch = p.channels, R = p.rank;
  const float* xe = p.x + e * p.d1 * ch + c0;
  // u[r, :] = v[e, r] * sum_i A[i, r] x[e, i, :]   (lhs(r, i) = A[i * R + r])
  rows<NV>(R, p.A, 1, R, p.d1, xe, ch, u, MAX_VECS * LANES, p.v + e * R, nullptr);
  // out[e, k, :] = w[e, :] * sum_r C[k, r] u[r, :]   (lhs(k, r) = C[k * R + r])
  rows<NV>(p.d3, p.C, R, 1, R, u, MAX_VECS * LANES, p.out + e * p.d3 * ch + c0, ch,
           nullptr, p.w + e * ch + c0);
}

void edges(const Problem& p, int64_t begin, int64_t end) {
  std::vector<float> u(static_cast<size_t>(p.rank) * MAX_VECS * LANES);
  for (int64_t e = begin; e < end; ++e)
    for (int64_t c0 = 0; c0 < p.channels; c0 += MAX_VECS * LANES) {
      switch (std::min<int64_t>(MAX_VECS, (p.channels - c0) / LANES)) {
        case 4: edge_block<4>(p, e, c0, u.data()); break;
        case 3: edge_block<3>(p, e, c0, u.data()); break;
        case 2: edge_block<2>(p, e, c0, u.data()); break;
        default: edge_block<1>(p, e, c0, u.data()); break;
      }
    }
}

}  // namespace

extern "C" {

// x [E, d1, ch], v [E, R], w [E, ch], A [d1, R], C [d3, R] -> out [E, d3, ch];
// all contiguous float32, ch % LANES == 0. Edges split into `threads` contiguous ranges.
void tdn_cp_uvu_forward_f32(const float* x, const float* v, const float* w,
                            const float* A, const float* C, float* out, int64_t E,
                            int64_t d1, int64_t rank, int64_t d3, int64_t channels,
                            int64_t threads) {
  const Problem p{x, v, w, A, C, out, d1, rank, d3, channels};
  threads = std::max<int64_t>(1, std::min(threads, E));
  if (threads == 1) {
    edges(p, 0, E);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (E + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = t * per, e = std::min(E, b + per);
    if (b < e) pool.emplace_back(edges, std::cref(p), b, e);
  }
  edges(p, 0, std::min(E, per));
  for (auto& th : pool) th.join();
}

}  // extern "C"
